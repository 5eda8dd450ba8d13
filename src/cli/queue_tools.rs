//! Offline queue tools: `ferry queue stats | peek | export | purge`.
//!
//! They open the store of a ferry that is **not** running (sled allows one
//! process per database; while ferry holds it they refuse at once, pointing
//! to `ferry status` for live numbers) and never create one: a `data_dir`
//! without a store is reported as such.
//!
//! - `stats`: one line per queue in the store, including queues of links no
//!   longer in the configuration (marked), as a table or `--json`;
//! - `peek`: the oldest messages of one queue, with a payload preview;
//! - `export`: every message of one queue as JSON lines, streamed (one record
//!   in memory at a time), payloads in base64;
//! - `purge`: deletes a link's queued messages, counted as dropped with
//!   reason `purged` so `received = forwarded + dropped + queued` still holds.
//!   Without `--yes` it only says what it would delete.
//!
//! `stats`, `peek` and `export` read a private copy of the store
//! ([`Store::open_copy`]): opening a sled database writes to it, and they
//! must leave the store byte-identical, a damaged one included.
//!
//! Each command writes to the `out` it is given (stdout in `main`), so tests
//! can run them in process.

use std::io::{self, Write};

use anyhow::{bail, Context};
use base64::Engine as _;
use serde_json::json;

use crate::cli::render::{format_age, format_bytes, render_table, rfc3339};
use crate::config::Config;
use crate::metrics::now_ms;
use crate::names::{queue_name, Direction};
use crate::store::{DropReason, Properties, Queue, QueueLimits, Record, Scanned, Store, StoreError};

/// How a tool opens the store.
#[derive(Clone, Copy)]
enum Access {
    /// A private copy ([`Store::open_copy`]): the store keeps every byte.
    Read,
    Write,
}

/// Opens the store under `cfg.data_dir` for an offline tool. `Ok(None)` when
/// there is no store yet.
fn open_store(cfg: &Config, access: Access) -> anyhow::Result<Option<Store>> {
    let opened = match access {
        Access::Read => Store::open_copy(&cfg.data_dir),
        Access::Write => Store::open_existing(&cfg.data_dir),
    };
    match opened {
        Ok(store) => Ok(Some(store)),
        Err(StoreError::NoStore { .. }) => Ok(None),
        Err(StoreError::Locked { .. }) => bail!(
            "ferry is running with data_dir {} (the store is locked); stop it first, or use `ferry status` for live numbers",
            cfg.data_dir.display()
        ),
        Err(e) => Err(e).context("cannot open the store"),
    }
}

/// Like [`open_store`], for commands that need a queue: no store is an error.
fn require_store(cfg: &Config, access: Access) -> anyhow::Result<Store> {
    match open_store(cfg, access)? {
        Some(store) => Ok(store),
        None => bail!(
            "{}: there is no store here yet (ferry has not run with this data_dir), so there are no queues",
            cfg.data_dir.display()
        ),
    }
}

/// The queues of `link` in `directions` that exist in the store; fails,
/// listing the queues that do exist, when there are none.
fn link_queues(store: &Store, link: &str, directions: &[Direction]) -> anyhow::Result<Vec<(String, Queue)>> {
    let mut names = store.queue_names();
    names.sort();
    let wanted: Vec<String> = directions
        .iter()
        .map(|d| queue_name(link, *d))
        .filter(|name| names.contains(name))
        .collect();
    if wanted.is_empty() {
        let which = match directions {
            [d] => format!("no `{d}` queue for link `{link}`"),
            _ => format!("no queue for link `{link}`"),
        };
        let existing = if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        };
        bail!("{which} in {}; the queues there: {existing}", store.path().display());
    }
    wanted
        .into_iter()
        .map(|name| {
            let queue = store
                .queue(&name, QueueLimits::UNBOUNDED)
                .with_context(|| format!("cannot open queue {name}"))?;
            Ok((name, queue))
        })
        .collect()
}

/// The store and the one queue of `link` in `direction` (see [`link_queues`]).
fn one_queue(cfg: &Config, link: &str, direction: Direction) -> anyhow::Result<(Store, String, Queue)> {
    let store = require_store(cfg, Access::Read)?;
    match link_queues(&store, link, &[direction])?.pop() {
        Some((name, queue)) => Ok((store, name, queue)),
        None => bail!("no `{direction}` queue for link `{link}`"),
    }
}

/// One queue's numbers, as `stats` shows them.
struct QueueStats {
    name: String,
    in_config: bool,
    messages: u64,
    bytes: u64,
    oldest_ms: Option<u64>,
    newest_ms: Option<u64>,
    received: u64,
    forwarded: u64,
    dropped: Vec<(DropReason, u64)>,
}

impl QueueStats {
    fn of(name: &str, queue: &Queue, cfg: &Config) -> QueueStats {
        let (depth, totals) = queue.stats();
        let link = name.rsplit_once('/').map_or(name, |(link, _)| link);
        QueueStats {
            name: name.to_string(),
            in_config: cfg.links.iter().any(|l| l.name == link),
            messages: depth.messages,
            bytes: depth.bytes,
            oldest_ms: queue.oldest_received_at_ms(),
            newest_ms: queue.newest_received_at_ms(),
            received: totals.received,
            forwarded: totals.forwarded,
            dropped: DropReason::ALL.iter().map(|r| (*r, totals.dropped(*r))).collect(),
        }
    }

    fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(|(_, n)| n).sum()
    }

    fn to_json(&self, now: u64) -> serde_json::Value {
        let (link, direction) = self.name.rsplit_once('/').unwrap_or((&self.name, ""));
        let dropped: serde_json::Map<String, serde_json::Value> = self
            .dropped
            .iter()
            .map(|(r, n)| (r.as_str().to_string(), json!(n)))
            .collect();
        json!({
            "queue": self.name,
            "link": link,
            "direction": direction,
            "in_config": self.in_config,
            "messages": self.messages,
            "bytes": self.bytes,
            "oldest_received_at_ms": self.oldest_ms,
            "oldest_received_at": self.oldest_ms.map(rfc3339),
            "oldest_age_secs": self.oldest_ms.map(|at| now.saturating_sub(at) / 1000),
            "newest_received_at_ms": self.newest_ms,
            "newest_received_at": self.newest_ms.map(rfc3339),
            "newest_age_secs": self.newest_ms.map(|at| now.saturating_sub(at) / 1000),
            "received": self.received,
            "forwarded": self.forwarded,
            "dropped": dropped,
        })
    }
}

/// `ferry queue stats`: every queue in the store, as a table or JSON.
pub fn stats(cfg: &Config, as_json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let Some(store) = open_store(cfg, Access::Read)? else {
        if as_json {
            writeln!(
                out,
                "{}",
                json!({ "data_dir": cfg.data_dir, "store": false, "queues": [] })
            )?;
        } else {
            writeln!(
                out,
                "{}: no store yet (ferry has not run with this data_dir): no queues",
                cfg.data_dir.display()
            )?;
        }
        return Ok(());
    };
    let mut names = store.queue_names();
    names.sort();
    let mut all = Vec::with_capacity(names.len());
    for name in &names {
        let queue = store
            .queue(name, QueueLimits::UNBOUNDED)
            .with_context(|| format!("cannot open queue {name}"))?;
        all.push(QueueStats::of(name, &queue, cfg));
    }
    let now = now_ms();
    if as_json {
        let queues: Vec<_> = all.iter().map(|q| q.to_json(now)).collect();
        writeln!(
            out,
            "{}",
            json!({ "data_dir": cfg.data_dir, "store": true, "queues": queues })
        )?;
        return Ok(());
    }
    if all.is_empty() {
        writeln!(out, "{}: the store holds no queues", cfg.data_dir.display())?;
        return Ok(());
    }
    let mut rows = vec![[
        "QUEUE",
        "MESSAGES",
        "BYTES",
        "OLDEST",
        "NEWEST",
        "RECEIVED",
        "FORWARDED",
        "DROPPED",
    ]
    .map(String::from)
    .to_vec()];
    for q in &all {
        let name = if q.in_config {
            q.name.clone()
        } else {
            format!("{} (not in config)", q.name)
        };
        let reasons: Vec<String> = q
            .dropped
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{} {n}", r.as_str()))
            .collect();
        let dropped = if reasons.is_empty() {
            "0".to_string()
        } else {
            format!("{} ({})", q.dropped_total(), reasons.join(", "))
        };
        rows.push(vec![
            name,
            q.messages.to_string(),
            format_bytes(q.bytes),
            when(q.oldest_ms, now),
            when(q.newest_ms, now),
            q.received.to_string(),
            q.forwarded.to_string(),
            dropped,
        ]);
    }
    write!(out, "{}", render_table(&rows))?;
    writeln!(
        out,
        "data_dir {} ({} queues); ages are as of {}",
        cfg.data_dir.display(),
        all.len(),
        rfc3339(now)
    )?;
    Ok(())
}

/// `ferry queue peek`: the `n` oldest messages of one queue.
pub fn peek(cfg: &Config, link: &str, direction: Direction, n: usize, out: &mut dyn Write) -> anyhow::Result<()> {
    let (_store, name, queue) = one_queue(cfg, link, direction)?;
    let depth = queue.depth();
    writeln!(
        out,
        "{name}: {} messages ({}), oldest first",
        depth.messages,
        format_bytes(depth.bytes)
    )?;
    if depth.messages == 0 {
        return Ok(());
    }
    let now = now_ms();
    let mut rows = vec![["SEQ", "AGE", "QOS", "RETAIN", "SIZE", "TOPIC", "PAYLOAD"]
        .map(String::from)
        .to_vec()];
    for item in queue.scan(0).take(n) {
        let Scanned { seq, size, record } = item.with_context(|| format!("cannot read queue {name}"))?;
        rows.push(match record {
            Ok(r) => vec![
                seq.to_string(),
                format_age(now.saturating_sub(r.received_at_ms) as f64 / 1000.0),
                r.qos.to_string(),
                if r.retain { "yes" } else { "no" }.to_string(),
                r.payload.len().to_string(),
                escape_controls(&r.topic),
                preview(&r.payload),
            ],
            Err(e) => vec![
                seq.to_string(),
                "?".into(),
                "?".into(),
                "?".into(),
                size.to_string(),
                "?".into(),
                format!("(damaged record: {e})"),
            ],
        });
    }
    write!(out, "{}", render_table(&rows))?;
    if depth.messages > n as u64 {
        writeln!(out, "... and {} more", depth.messages - n as u64)?;
    }
    Ok(())
}

/// `ferry queue export`: every message of one queue as a JSON line, oldest
/// first. Damaged records are skipped, named on stderr, and make it fail
/// once everything else is written. A closed pipe (`| head`) ends it quietly.
pub fn export(cfg: &Config, link: &str, direction: Direction, out: &mut dyn Write) -> anyhow::Result<()> {
    let (_store, name, queue) = one_queue(cfg, link, direction)?;
    let mut damaged = 0u64;
    for item in queue.scan(0) {
        let Scanned { seq, record, .. } = item.with_context(|| format!("cannot read queue {name}"))?;
        let line = match record {
            Ok(r) => json_line(&export_line(seq, &r)),
            Err(e) => {
                eprintln!("{name}: seq {seq}: damaged record skipped: {e}");
                damaged += 1;
                continue;
            }
        };
        match writeln!(out, "{line}") {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            other => other.context("cannot write the export")?,
        }
    }
    match out.flush() {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        other => other.context("cannot write the export")?,
    }
    if damaged > 0 {
        bail!("{name}: {damaged} damaged records could not be exported (skipped)");
    }
    Ok(())
}

/// One message as an export line.
fn export_line(seq: u64, r: &Record) -> serde_json::Value {
    let mut line = json!({
        "seq": seq,
        "topic": r.topic,
        "qos": r.qos,
        "retain": r.retain,
        "received_at": rfc3339(r.received_at_ms),
        "received_at_ms": r.received_at_ms,
        "payload_base64": base64::engine::general_purpose::STANDARD.encode(&r.payload),
    });
    if r.properties != Properties::default() {
        line["properties"] = properties_json(&r.properties);
    }
    line
}

/// The MQTT v5 properties that are set (binary correlation data in base64).
fn properties_json(p: &Properties) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    if let Some(v) = p.payload_format_indicator {
        map.insert("payload_format_indicator".into(), json!(v));
    }
    if let Some(v) = p.message_expiry_interval {
        map.insert("message_expiry_interval".into(), json!(v));
    }
    if let Some(v) = &p.response_topic {
        map.insert("response_topic".into(), json!(v));
    }
    if let Some(v) = &p.correlation_data {
        map.insert(
            "correlation_data_base64".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(v)),
        );
    }
    if !p.user_properties.is_empty() {
        map.insert("user_properties".into(), json!(p.user_properties));
    }
    if let Some(v) = &p.content_type {
        map.insert("content_type".into(), json!(v));
    }
    serde_json::Value::Object(map)
}

/// `ferry queue purge`: deletes every queued message of `link` in
/// `directions`, counted as dropped (reason `purged`). Without `yes` it only
/// says what it would delete.
pub fn purge(cfg: &Config, link: &str, directions: &[Direction], yes: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = require_store(cfg, Access::Write)?;
    let queues = link_queues(&store, link, directions)?;
    if !yes {
        for (name, queue) in &queues {
            let depth = queue.depth();
            writeln!(
                out,
                "would purge {} messages ({}) from {name}",
                depth.messages,
                format_bytes(depth.bytes)
            )?;
        }
        writeln!(
            out,
            "nothing was deleted; re-run with --yes to delete them (counted as dropped, reason=purged)"
        )?;
        return Ok(());
    }
    for (name, queue) in &queues {
        let purged = queue.purge().with_context(|| format!("cannot purge {name}"))?;
        store
            .checkpoint()
            .with_context(|| format!("cannot make the purge of {name} durable"))?;
        writeln!(
            out,
            "purged {purged} messages from {name} (counted as dropped, reason=purged)"
        )?;
    }
    Ok(())
}

/// "3m 12s ago (2026-11-25T06:28:00.000Z)", or "-" for an empty queue.
fn when(at_ms: Option<u64>, now: u64) -> String {
    match at_ms {
        Some(at) => format!(
            "{} ago ({})",
            format_age((now.saturating_sub(at) as f64 / 1000.0).max(0.5)),
            rfc3339(at)
        ),
        None => "-".to_string(),
    }
}

/// `text` with every control character (C0, DEL, C1) written as an escape
/// (`\n`, `\u{1b}`), so a topic cannot move the cursor or recolour the
/// operator's terminal.
pub fn escape_controls(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A JSON value on one line with no raw control character: serde_json
/// escapes C0 but writes DEL and C1 (such as U+009B, a terminal's CSI) as they are.
fn json_line(value: &serde_json::Value) -> String {
    value
        .to_string()
        .chars()
        .map(|c| {
            if c.is_control() {
                format!("\\u{:04x}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A payload preview: printable UTF-8 in quotes, cut at 40 characters with
/// "…"; anything else as hex of the first 16 bytes.
pub fn preview(payload: &[u8]) -> String {
    const CHARS: usize = 40;
    const BYTES: usize = 16;
    if let Ok(text) = std::str::from_utf8(payload) {
        if !text.chars().any(char::is_control) {
            let shown: String = text.chars().take(CHARS).collect();
            let more = if text.chars().count() > CHARS { "…" } else { "" };
            return format!("\"{shown}{more}\"");
        }
    }
    let hex: Vec<String> = payload.iter().take(BYTES).map(|b| format!("{b:02x}")).collect();
    let more = if payload.len() > BYTES { " …" } else { "" };
    format!("hex {}{more}", hex.join(" "))
}

#[cfg(test)]
use tests as tests_support;

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with one link `a` (out and in routes) and data_dir `dir`.
    pub(super) fn config(dir: &std::path::Path) -> Config {
        let text = format!(
            "data_dir = \"{}\"\n[hub]\nhost = \"127.0.0.1\"\n[[links]]\nname = \"a\"\nhost = \"127.0.0.1\"\n\
             [[links.routes]]\ndirection = \"out\"\nlocal = \"a/#\"\nremote = \"a/#\"\n\
             [[links.routes]]\ndirection = \"in\"\nremote = \"b/#\"\nlocal = \"b/#\"\n",
            dir.display()
        );
        Config::parse(&text, std::path::Path::new("test.toml")).unwrap()
    }

    fn record(i: u8) -> Record {
        Record {
            topic: format!("t/{i}"),
            payload: vec![i; 3],
            qos: 1,
            retain: false,
            received_at_ms: 1_000 * u64::from(i),
            properties: Properties::default(),
        }
    }

    /// Fills queues `a/out` (3 messages), `a/in` (1) and `gone/out` (2, a link not in the config).
    pub(super) fn fill(dir: &std::path::Path) {
        let store = Store::open(dir).unwrap();
        for (name, n) in [("a/out", 3), ("a/in", 1), ("gone/out", 2)] {
            let q = store.queue(name, QueueLimits::UNBOUNDED).unwrap();
            q.append(&(0..n).map(record).collect::<Vec<_>>()).unwrap();
        }
        store.checkpoint().unwrap();
    }

    fn text(run: impl FnOnce(&mut Vec<u8>) -> anyhow::Result<()>) -> anyhow::Result<String> {
        let mut out = Vec::new();
        run(&mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn stats_lists_every_queue_and_marks_those_not_in_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        fill(dir.path());
        let table = text(|out| stats(&cfg, false, out)).unwrap();
        let rows: Vec<Vec<&str>> = table
            .lines()
            .skip(1)
            .take(3)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows.iter().map(|r| (r[0], r[1])).collect::<Vec<_>>(),
            [("a/in", "1"), ("a/out", "3"), ("gone/out", "(not")],
            "{table}"
        );
        let doc: serde_json::Value = serde_json::from_str(&text(|out| stats(&cfg, true, out)).unwrap()).unwrap();
        let gone = &doc["queues"][2];
        assert_eq!(
            (
                gone["queue"].as_str(),
                gone["in_config"].as_bool(),
                gone["messages"].as_u64()
            ),
            (Some("gone/out"), Some(false), Some(2))
        );
        assert_eq!(
            (
                gone["oldest_received_at_ms"].as_u64(),
                gone["newest_received_at_ms"].as_u64()
            ),
            (Some(0), Some(1_000))
        );
    }

    #[test]
    fn purge_takes_one_direction_or_both_and_links_no_longer_configured() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        fill(dir.path());
        let preview = text(|out| purge(&cfg, "a", &[Direction::In], false, out)).unwrap();
        assert!(
            preview.contains("would purge 1 messages") && !preview.contains("a/out"),
            "{preview}"
        );
        text(|out| purge(&cfg, "a", &[Direction::In], true, out)).unwrap();
        text(|out| purge(&cfg, "gone", &[Direction::Out, Direction::In], true, out)).unwrap();
        let store = Store::open_existing(dir.path()).unwrap();
        let depth = |name: &str| store.queue(name, QueueLimits::UNBOUNDED).unwrap().depth().messages;
        assert_eq!((depth("a/out"), depth("a/in"), depth("gone/out")), (3, 0, 0));
        let totals = store.queue("gone/out", QueueLimits::UNBOUNDED).unwrap().totals();
        assert_eq!((totals.received, totals.dropped(DropReason::Purged)), (2, 2));
    }

    #[test]
    fn a_missing_queue_is_an_error_naming_the_queues_that_exist() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        fill(dir.path());
        let err = text(|out| peek(&cfg, "nosuch", Direction::Out, 10, out))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no `out` queue for link `nosuch`") && err.contains("a/in, a/out, gone/out"),
            "{err}"
        );
        let err = text(|out| export(&cfg, "gone", Direction::In, out))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no `in` queue for link `gone`"), "{err}");
    }

    #[test]
    fn export_skips_a_damaged_record_and_fails_after_writing_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        fill(dir.path());
        {
            // Damage the middle record of a/out behind the store's back: the
            // three records are one batch value; flip the last byte of the
            // second record's span.
            let db = sled::open(dir.path().join("store")).unwrap();
            let tree = db.open_tree("queue/a/out").unwrap();
            let (k, v) = tree.iter().next().unwrap().unwrap();
            let first = u64::from_be_bytes(k.as_ref().try_into().unwrap());
            let spans = crate::store::record::batch_spans(first, &v).unwrap();
            assert_eq!(spans.len(), 3, "one value holds the batch");
            let mut v = v.to_vec();
            v[spans[1].end - 1] ^= 0xff;
            tree.insert(k, v).unwrap();
            db.flush().unwrap();
        }
        let mut out = Vec::new();
        let err = export(&cfg, "a", Direction::Out, &mut out).unwrap_err().to_string();
        assert!(err.contains("1 damaged records"), "{err}");
        let topics: Vec<String> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["topic"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(topics, ["t/0", "t/2"]);
        let shown = text(|out| peek(&cfg, "a", Direction::Out, 10, out)).unwrap();
        assert!(shown.contains("(damaged record: checksum mismatch)"), "{shown}");
    }

    #[test]
    fn peek_and_export_escape_control_characters_in_topics() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        {
            let store = Store::open(dir.path()).unwrap();
            let q = store.queue("a/out", QueueLimits::UNBOUNDED).unwrap();
            let mut r = record(1);
            r.topic = "t/\u{1b}[2J\nfake row\u{9b}31m".into();
            r.payload = b"\x1b]0;title\x07".to_vec();
            q.append(&[r]).unwrap();
            store.checkpoint().unwrap();
        }
        let shown = text(|out| peek(&cfg, "a", Direction::Out, 10, out)).unwrap();
        assert!(!shown.chars().any(|c| c.is_control() && c != '\n'), "{shown:?}");
        assert_eq!(shown.lines().count(), 3, "a summary, a header and one row: {shown:?}");
        assert!(shown.contains("t/\\u{1b}[2J\\nfake row\\u{9b}31m"), "{shown:?}");
        let exported = text(|out| export(&cfg, "a", Direction::Out, out)).unwrap();
        assert!(!exported.trim_end().chars().any(char::is_control), "{exported:?}");
        let line: serde_json::Value = serde_json::from_str(exported.trim_end()).unwrap();
        assert_eq!(line["topic"], "t/\u{1b}[2J\nfake row\u{9b}31m");
    }

    #[test]
    fn previews_show_text_or_hex_and_mark_what_is_cut() {
        assert_eq!(preview(b"21.5"), "\"21.5\"");
        assert_eq!(preview("é".repeat(41).as_bytes()), format!("\"{}…\"", "é".repeat(40)));
        assert_eq!(preview(&[0, 1, 0xff]), "hex 00 01 ff");
        assert_eq!(preview(b"line\nbreak"), "hex 6c 69 6e 65 0a 62 72 65 61 6b");
        assert!(preview(&[0u8; 17]).ends_with(" …"));
    }

    #[test]
    fn export_lines_carry_base64_payloads_and_only_set_properties() {
        let mut r = Record {
            topic: "a/b".into(),
            payload: b"hi".to_vec(),
            qos: 1,
            retain: true,
            received_at_ms: 1_700_000_000_123,
            properties: Properties::default(),
        };
        let line = export_line(7, &r);
        assert_eq!(line["payload_base64"], "aGk=");
        assert_eq!(line["received_at"], "2023-11-14T22:13:20.123Z");
        assert!(line.get("properties").is_none());
        r.properties.content_type = Some("text/plain".into());
        r.properties.user_properties = vec![("k".into(), "v".into())];
        let line = export_line(7, &r);
        assert_eq!(
            line["properties"],
            json!({ "content_type": "text/plain", "user_properties": [["k", "v"]] })
        );
    }
}

#[cfg(test)]
mod read_only_tests {
    use super::tests_support::*;
    use super::*;

    /// Every file under `dir` with its bytes.
    fn contents(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(contents(&path));
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn stats_peek_and_export_leave_every_byte_of_the_store_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        fill(dir.path());
        let sink = |run: &dyn Fn(&mut Vec<u8>) -> anyhow::Result<()>| {
            let mut out = Vec::new();
            let _ = run(&mut out);
        };
        for damage in [false, true] {
            if damage {
                // A torn tail, as sled would repair (rewrite) on open.
                let db = dir.path().join("store").join("db");
                let len = std::fs::metadata(&db).unwrap().len();
                let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
                f.set_len(len / 2).unwrap();
            }
            let before = contents(dir.path());
            sink(&|out| stats(&cfg, true, out));
            sink(&|out| stats(&cfg, false, out));
            sink(&|out| peek(&cfg, "a", Direction::Out, 10, out));
            sink(&|out| export(&cfg, "a", Direction::Out, out));
            let after = contents(dir.path());
            let changed: Vec<_> = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| b != a)
                .map(|(b, _)| b.0.display().to_string())
                .collect();
            assert!(
                before.len() == after.len() && changed.is_empty(),
                "damaged {damage}: files changed: {changed:?}"
            );
        }
    }
}
