//! The ledger: a small file beside the database recording, per queue, the
//! highest sequence number and the `received` total that were durable at the
//! last checkpoint.
//!
//! Both only grow. sled 0.34 does not notice a damaged or truncated file:
//! it opens it and quietly returns less (it takes the damage for the torn
//! tail of a crash). Comparing the reopened queues with the ledger turns
//! that silent loss into an error the operator sees. The ledger is written
//! to a temporary file (mode 0600), synced, and renamed over the old one,
//! and the directory is synced, so it is always whole and durable. It is
//! written (empty) before a new store is renamed into place: a `store`
//! always has a ledger beside it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// What the ledger knows of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub next_seq: u64,
    pub received: u64,
}

const HEADER: &str = "ferry-ledger v1";

/// Reads the ledger; a missing file is an empty ledger.
pub(crate) fn read(path: &Path) -> Result<BTreeMap<String, Mark>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(format!(
            "{}: not a ferry ledger (first line is not {HEADER:?})",
            path.display()
        ));
    }
    let mut marks = BTreeMap::new();
    for (n, line) in lines.enumerate() {
        let mut fields = line.splitn(3, '\t');
        let (Some(next_seq), Some(received), Some(name)) = (fields.next(), fields.next(), fields.next()) else {
            return Err(format!("{}:{}: malformed line", path.display(), n + 2));
        };
        let parse = |v: &str| {
            v.parse::<u64>()
                .map_err(|e| format!("{}:{}: {e}", path.display(), n + 2))
        };
        marks.insert(
            name.to_string(),
            Mark {
                next_seq: parse(next_seq)?,
                received: parse(received)?,
            },
        );
    }
    Ok(marks)
}

/// Replaces the ledger atomically.
pub(crate) fn write(path: &Path, marks: &BTreeMap<String, Mark>) -> std::io::Result<()> {
    let mut text = String::from(HEADER);
    text.push('\n');
    for (name, m) in marks {
        text.push_str(&format!("{}\t{}\t{}\n", m.next_seq, m.received, name));
    }
    let tmp = path.with_extension("tmp");
    let mut f = super::durable::create_private_file(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        super::durable::sync_dir(dir)?;
    }
    Ok(())
}
