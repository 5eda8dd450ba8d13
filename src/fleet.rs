//! A fleet: one configuration file served by N ferry processes (shards), each
//! running only its own links, so that no link runs twice.
//!
//! Which shard owns a link is decided by rendezvous hashing (highest random
//! weight) of the link's name: every shard computes, for each link, a weight
//! per shard index and the link belongs to the index with the highest weight.
//! All shards agree without talking to each other, and when N changes only
//! the links whose highest weight is now a new index move (N 3 -> 4 moves
//! about a quarter of the links, all to shard 3; no link moves between the
//! shards that stay).
//!
//! The weight is [`weight`]: FNV-1a 64 over the name's UTF-8 bytes, a 0 byte
//! and the shard index as 4 little-endian bytes, then the murmur3 64-bit
//! finalizer (FNV-1a alone mixes the last bytes poorly). It must never change:
//! a link's queue lives on its shard's volume, and a different hash would
//! move links in every fleet that upgrades. The unit tests pin known
//! assignments.
//!
//! This module also resolves `shard = "auto"` at start-up (`FERRY_SHARD`,
//! else the hostname's trailing `-<number>`, as a StatefulSet names its pods),
//! refuses to start a shard whose store still holds messages of a link the
//! layout gives to another shard, and lists the links that move between two
//! layouts (`ferry check --from-shards`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::store::{QueueLimits, Store, StoreError};

/// The environment variable that names this process's shard when the config
/// says `shard = "auto"`. It wins over the hostname.
pub(crate) const SHARD_ENV: &str = "FERRY_SHARD";
/// The largest `shards` the config accepts (a sanity bound, not a limit of the hash).
pub(crate) const MAX_SHARDS: u32 = 4096;

/// How this process learns its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShardSetting {
    /// `shard = K`.
    Index(u32),
    /// `shard = "auto"`: from `FERRY_SHARD`, else the hostname's ordinal.
    Auto,
}

/// `[fleet]`: how many shards there are and which one this process is.
/// Without a `[fleet]` section: one shard, index 0 (every link runs here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FleetConfig {
    pub shards: u32,
    pub shard: ShardSetting,
    /// `file:line` of `shards` and `shard`, for start-up errors (None when not set).
    pub shards_at: Option<String>,
    pub shard_at: Option<String>,
}

impl Default for FleetConfig {
    fn default() -> FleetConfig {
        FleetConfig {
            shards: 1,
            shard: ShardSetting::Index(0),
            shards_at: None,
            shard_at: None,
        }
    }
}

impl FleetConfig {
    /// True when the file has a `[fleet]` with more than one shard.
    pub(crate) fn is_sharded(&self) -> bool {
        self.shards > 1
    }
}

/// This process's place in the fleet, once resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardView {
    pub index: u32,
    pub shards: u32,
    /// Where the index came from: `config`, `FERRY_SHARD=2`, `hostname ferry-2`.
    pub from: String,
}

impl ShardView {
    /// Whether the link named `name` runs on this shard.
    pub(crate) fn owns(&self, name: &str) -> bool {
        shard_of(name, self.shards) == self.index
    }

    /// `shard 1 of 3 (hostname ferry-1)`.
    pub(crate) fn describe(&self) -> String {
        format!("shard {} of {} ({})", self.index, self.shards, self.from)
    }
}

/// The rendezvous weight of `name` for shard `index`. Never change it (see the module doc).
fn weight(name: &str, index: u32) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET;
    for byte in name.bytes().chain([0]).chain(index.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    // murmur3's fmix64.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// The shard (0..shards) that owns the link named `name`: the index with
/// the highest weight (ties, practically impossible, go to the lower index).
pub(crate) fn shard_of(name: &str, shards: u32) -> u32 {
    let mut best = (0, weight(name, 0));
    for index in 1..shards {
        let w = weight(name, index);
        if w > best.1 {
            best = (index, w);
        }
    }
    best.0
}

/// A link whose shard differs between two layouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Move {
    pub link: String,
    pub from: u32,
    pub to: u32,
}

/// The links of `names` that change shard when the fleet goes from
/// `old_shards` to `new_shards`, in the order given.
pub(crate) fn moves<'a>(names: impl IntoIterator<Item = &'a str>, old_shards: u32, new_shards: u32) -> Vec<Move> {
    names
        .into_iter()
        .filter_map(|name| {
            let (from, to) = (shard_of(name, old_shards), shard_of(name, new_shards));
            (from != to).then(|| Move {
                link: name.to_owned(),
                from,
                to,
            })
        })
        .collect()
}

/// What `ferry check --from-shards OLD` prints for the configured layout.
pub(crate) fn describe_moves<'a>(names: impl IntoIterator<Item = &'a str>, old_shards: u32, new_shards: u32) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    let moving = moves(names.iter().copied(), old_shards, new_shards);
    let mut out = format!(
        "from {old_shards} to {new_shards} shard{}: {} of {} link{} move\n",
        if new_shards == 1 { "" } else { "s" },
        moving.len(),
        names.len(),
        if names.len() == 1 { "" } else { "s" }
    );
    for m in &moving {
        out.push_str(&format!("  {}  shard {} -> shard {}\n", m.link, m.from, m.to));
    }
    if !moving.is_empty() {
        out.push_str(
            "Before the new layout starts, empty these links' queues on their old shard (`ferry link drain NAME`); \
             a shard refuses to start while its volume holds messages of a link it no longer runs.\n",
        );
    }
    out
}

/// Resolves this process's shard from the config, `FERRY_SHARD` and the hostname.
pub(crate) fn resolve(fleet: &FleetConfig) -> Result<ShardView, String> {
    let env = std::env::var(SHARD_ENV).ok().filter(|v| !v.is_empty());
    resolve_with(fleet, env, hostname)
}

/// [`resolve`] with the environment and the hostname passed in (for tests).
fn resolve_with(
    fleet: &FleetConfig,
    env: Option<String>,
    hostname: impl FnOnce() -> Result<String, String>,
) -> Result<ShardView, String> {
    let shards = fleet.shards;
    let at = |place: &Option<String>| place.as_ref().map_or(String::new(), |p| format!(" ({p})"));
    let range = format!(
        "[fleet] shards = {shards}{}, so a shard is 0 to {}",
        at(&fleet.shards_at),
        shards - 1
    );
    let (index, from) = match fleet.shard {
        ShardSetting::Index(index) => (index, "config".to_owned()),
        ShardSetting::Auto => match env {
            Some(value) => {
                let index = value.trim().parse::<u32>().map_err(|_| {
                    format!(
                        "{SHARD_ENV} is {value:?}, not a shard number; [fleet] shard = \"auto\"{} reads this \
                         instance's shard from it ({range})",
                        at(&fleet.shard_at)
                    )
                })?;
                (index, format!("{SHARD_ENV}={index}"))
            }
            None => {
                let host = hostname()?;
                let index = trailing_ordinal(&host).ok_or_else(|| {
                    format!(
                        "[fleet] shard = \"auto\"{} takes this instance's shard from {SHARD_ENV} or from the \
                         hostname's trailing \"-<number>\" (a StatefulSet's pod \"ferry-2\" is shard 2), but \
                         {SHARD_ENV} is not set and the hostname is {host:?}; set {SHARD_ENV}, or shard = <number>",
                        at(&fleet.shard_at)
                    )
                })?;
                (index, format!("hostname {host}"))
            }
        },
    };
    if index >= shards {
        return Err(format!(
            "this instance is shard {index} (from {from}), but {range}; run {shards} instances numbered 0 to {}, \
             or change shards",
            shards - 1
        ));
    }
    Ok(ShardView { index, shards, from })
}

/// The number after the last `-` of the first label of `host` (`ferry-3`,
/// `ferry-3.ferry.ns.svc` -> 3).
fn trailing_ordinal(host: &str) -> Option<u32> {
    let label = host.split('.').next()?;
    let (_, digits) = label.rsplit_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// This machine's hostname (`gethostname(2)`).
fn hostname() -> Result<String, String> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid and writable for `buf.len()` bytes for the call.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(format!(
            "[fleet] shard = \"auto\": cannot read the hostname: {}; set {SHARD_ENV}",
            std::io::Error::last_os_error()
        ));
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Refuses a store that holds queued messages of a configured link that the
/// layout gives to another shard: starting would strand them on this volume.
/// Queues of such links that are empty, and queues of links not in the
/// config at all, are fine.
pub(crate) fn check_foreign_queues<'a>(
    shard: &ShardView,
    links: impl IntoIterator<Item = &'a str>,
    store: &Store,
) -> anyhow::Result<()> {
    let foreign: Vec<&str> = links.into_iter().filter(|name| !shard.owns(name)).collect();
    let mut stranded = Vec::new();
    for queue in store.queue_names() {
        let Some((link, _direction)) = queue.rsplit_once('/') else {
            continue;
        };
        if !foreign.contains(&link) {
            continue;
        }
        let depth = store
            .queue(&queue, QueueLimits::UNBOUNDED)
            .map_err(|e: StoreError| anyhow::anyhow!("{e}"))?
            .depth();
        if depth.messages > 0 {
            stranded.push(format!(
                "{queue} ({} messages, {} bytes; now shard {}'s)",
                depth.messages,
                depth.bytes,
                shard_of(link, shard.shards)
            ));
        }
    }
    if stranded.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "this is {}, and its data_dir holds queued messages of links the layout gives to other shards: {}. \
         Starting would leave them behind. Drain each of these links first on the layout that runs them \
         (`ferry link drain NAME`), or run the old layout until their queues are empty; then start this one",
        shard.describe(),
        stranded.join(", ")
    )
}

/// For messages: `path:line`.
pub(crate) fn place(path: &Path, line: usize) -> String {
    format!("{}:{line}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("edge{i}")).collect()
    }

    #[test]
    fn known_assignments_never_change() {
        // Pinned: a change here moves links in every fleet that upgrades.
        let got: Vec<(u32, u32, u32)> = ["edge0", "edge1", "edge2", "edge3", "site-berlin-07", "a"]
            .iter()
            .map(|n| (shard_of(n, 2), shard_of(n, 3), shard_of(n, 4)))
            .collect();
        assert_eq!(got, PINNED, "the rendezvous hash changed");
        assert_eq!(weight("edge0", 0), PINNED_WEIGHT);
        for name in names(50) {
            assert_eq!(shard_of(&name, 1), 0);
        }
    }
    /// (shard of 2, of 3, of 4) for each name above; computed once, also by an
    /// independent Python version of [`weight`], and never to be edited.
    const PINNED: [(u32, u32, u32); 6] = [(0, 0, 3), (1, 1, 1), (0, 0, 3), (1, 1, 1), (0, 2, 2), (0, 0, 0)];
    const PINNED_WEIGHT: u64 = 0x7a1c_5f47_d869_7f55;

    #[test]
    fn assignment_is_balanced() {
        let all = names(1000);
        let mut counts = [0usize; 3];
        for name in &all {
            counts[shard_of(name, 3) as usize] += 1;
        }
        for (shard, &count) in counts.iter().enumerate() {
            assert!(
                (283..=383).contains(&count),
                "shard {shard} got {count} of 1000 links (want 1/3 ± 15%): {counts:?}"
            );
        }
    }

    #[test]
    fn growing_moves_only_links_to_the_new_shard() {
        let all = names(1000);
        let moved = moves(all.iter().map(String::as_str), 3, 4);
        assert!(moved.iter().all(|m| m.to == 3), "{moved:?}");
        // About a quarter move; none between the shards that stay.
        assert!((200..=300).contains(&moved.len()), "{} moved", moved.len());
        let shrunk = moves(all.iter().map(String::as_str), 4, 3);
        assert!(shrunk.iter().all(|m| m.from == 3));
        assert_eq!(shrunk.len(), moved.len());
        assert!(moves(all.iter().map(String::as_str), 3, 3).is_empty());
    }

    fn auto(shards: u32) -> FleetConfig {
        FleetConfig {
            shards,
            shard: ShardSetting::Auto,
            shards_at: Some("f.toml:2".into()),
            shard_at: Some("f.toml:3".into()),
        }
    }

    #[test]
    fn auto_reads_the_environment_then_the_hostname() {
        let host = |h: &str| {
            let h = h.to_owned();
            move || Ok(h)
        };
        let shard = resolve_with(&auto(3), Some("2".into()), host("ferry-0")).unwrap();
        assert_eq!((shard.index, shard.from.as_str()), (2, "FERRY_SHARD=2"));
        let shard = resolve_with(&auto(3), None, host("ferry-1.ferry.default.svc")).unwrap();
        assert_eq!(
            (shard.index, shard.from.as_str()),
            (1, "hostname ferry-1.ferry.default.svc")
        );
        let fixed = FleetConfig {
            shard: ShardSetting::Index(1),
            ..auto(3)
        };
        assert_eq!(resolve_with(&fixed, Some("2".into()), host("x")).unwrap().index, 1);
    }

    #[test]
    fn auto_without_an_ordinal_says_what_it_read() {
        let e = resolve_with(&auto(3), None, || Ok("buildhost".into())).unwrap_err();
        assert!(
            e.contains("(f.toml:3)") && e.contains("\"buildhost\"") && e.contains("FERRY_SHARD is not set"),
            "{e}"
        );
        let e = resolve_with(&auto(3), Some("two".into()), || Ok("ferry-1".into())).unwrap_err();
        assert!(e.contains("FERRY_SHARD is \"two\""), "{e}");
        let e = resolve_with(&auto(3), None, || Ok("ferry-3".into())).unwrap_err();
        assert!(
            e.contains("shard 3 (from hostname ferry-3)") && e.contains("shards = 3 (f.toml:2)"),
            "{e}"
        );
        for host in ["ferry", "ferry-", "ferry-x1", "web01"] {
            assert_eq!(trailing_ordinal(host), None, "{host}");
        }
    }
}
