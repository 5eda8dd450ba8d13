//! The text `ferry check` prints: everything ferry understood from the file,
//! with defaults filled in and secrets left out (it says where each comes
//! from, never what it is).

use super::values::format_size;
use super::{Config, PasswordSource};
use crate::cli::render::format_bytes;
use crate::fleet::{describe_moves, shard_of, ShardSetting, SHARD_ENV};
use crate::store::{MaxBytes, DEFAULT_RESERVE_BYTES};

impl Config {
    /// What `ferry check` prints: everything ferry understood from the file.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line(format!("config    {}", self.source.display()));
        line(format!("data_dir  {}", self.data_dir.display()));
        line(format!("store     {}", self.describe_budget()));
        line(match self.metrics.listen {
            Some(address) => format!("metrics   http://{address}/metrics"),
            None => "metrics   off".to_owned(),
        });
        line(match self.admin.listen {
            Some(address) => format!(
                "admin     http://{address}/v1/links{}",
                if self.admin.token.is_some() {
                    "  (bearer token required, from token_file)"
                } else {
                    ""
                }
            ),
            None => "admin     off".to_owned(),
        });
        let hub = &self.hub;
        line(format!(
            "hub       {}:{}  client id {:?} (each link adds \"-<name>\"){}",
            hub.host,
            hub.port,
            hub.client_id,
            describe_credentials(&hub.username, &hub.password_source)
        ));
        if let Some(tls) = &hub.tls {
            line(format!("          {}", describe_tls(tls)));
        }
        if hub.addresses.len() > 1 {
            line(format!("          {}", describe_hosts(&hub.addresses, hub.failback)));
        }
        line(match &hub.state_topic {
            Some(pattern) => format!("state     retained on the hub at {pattern:?}"),
            None => "state     off".to_owned(),
        });
        line(format!(
            "{} link{}",
            self.links.len(),
            if self.links.len() == 1 { "" } else { "s" }
        ));
        for text in self.fleet_summary() {
            line(text);
        }
        for link in &self.links {
            line(String::new());
            line(format!(
                "link {}  {}:{}  {}{}",
                link.name,
                link.host,
                link.port,
                if link.enabled { "enabled" } else { "disabled" },
                match self.fleet.is_sharded() {
                    true => format!("  shard {}", shard_of(&link.name, self.fleet.shards)),
                    false => String::new(),
                }
            ));
            line(format!(
                "  client ids  edge {:?}, hub {:?}{}",
                link.client_id,
                link.hub_client_id(hub),
                describe_credentials(&link.username, &link.password_source)
            ));
            if let Some(tls) = &link.tls {
                line(format!("  {}", describe_tls(tls)));
            }
            if link.addresses.len() > 1 {
                line(format!("  {}", describe_hosts(&link.addresses, link.failback)));
            }
            line(format!(
                "  keepalive {}s, reconnect {}ms..{}ms, inflight {}, max message {}",
                link.keepalive.as_secs(),
                link.reconnect_min.as_millis(),
                link.reconnect_max.as_millis(),
                link.inflight,
                format_size(u64::from(link.max_message_bytes))
            ));
            if (link.protocol, hub.protocol) != Default::default() {
                line(format!(
                    "  protocol edge {}, hub {}",
                    link.protocol.as_str(),
                    hub.protocol.as_str()
                ));
            }
            if link.pace != Default::default() {
                let rate = |rate: Option<u64>, unit: fn(u64) -> String| rate.map_or("off".to_owned(), unit);
                line(format!(
                    "  drain pace {}, {}",
                    rate(link.pace.drain_rate, |r| format!("{r}/s")),
                    rate(link.pace.drain_bytes_rate, |r| format!("{}/s", format_size(r)))
                ));
            }
            line(format!(
                "  queue limit {}, {}, overflow {}, message ttl {}",
                match link.queue_max_bytes {
                    0 => "none in bytes".to_owned(),
                    bytes => format_size(bytes),
                },
                match link.queue_max_messages {
                    0 => "none in messages".to_owned(),
                    count => format!("{count} messages"),
                },
                link.overflow.as_str(),
                match link.message_ttl {
                    None => "none".to_owned(),
                    Some(ttl) => format!("{}s", ttl.as_secs()),
                }
            ));
            for route in &link.routes {
                line(format!("  {route}"));
            }
        }
        out
    }
}

impl Config {
    /// `budget 8MiB, reserve 2MiB`, or `budget auto: ...` with what auto
    /// gives on data_dir's filesystem now.
    fn describe_budget(&self) -> String {
        let reserve = |max: u64| match self.store_reserve_bytes {
            Some(reserve) => format_size(reserve),
            None => format!("{} (default)", format_bytes(DEFAULT_RESERVE_BYTES.min(max / 4))),
        };
        match self.store_max_bytes {
            MaxBytes::Off => "budget off (only a full disk stops the store growing)".to_owned(),
            MaxBytes::Bytes(max) => format!("budget {}, reserve {}", format_size(max), reserve(max)),
            MaxBytes::Auto => match crate::store::auto_max_bytes(&self.data_dir) {
                Some(max) => format!(
                    "budget auto: {} now (leaves max(5% of the filesystem, 1GiB) free, at most half of it), reserve {}",
                    format_bytes(max),
                    reserve(max)
                ),
                None => "budget auto: cannot measure the filesystem of data_dir yet (computed at start)".to_owned(),
            },
        }
    }

    /// With `[fleet]`: the layout and each shard's links (nothing otherwise).
    fn fleet_summary(&self) -> Vec<String> {
        let fleet = &self.fleet;
        if !fleet.is_sharded() {
            return Vec::new();
        }
        let mut lines = vec![format!(
            "fleet     {} shards, this instance: {}",
            fleet.shards,
            match fleet.shard {
                ShardSetting::Index(index) => format!("shard {index}"),
                ShardSetting::Auto => format!("shard \"auto\" (${SHARD_ENV}, else the hostname's \"-<number>\")"),
            }
        )];
        for shard in 0..fleet.shards {
            let links: Vec<&str> = self
                .links
                .iter()
                .map(|link| link.name.as_str())
                .filter(|name| shard_of(name, fleet.shards) == shard)
                .collect();
            lines.push(format!(
                "  shard {shard}: {} link{}{}{}",
                links.len(),
                if links.len() == 1 { "" } else { "s" },
                if links.is_empty() { "" } else { ": " },
                links.join(", ")
            ));
        }
        lines
    }

    /// What `ferry check --from-shards OLD` adds: the links that change shard.
    pub fn shard_moves(&self, old_shards: u32) -> String {
        describe_moves(
            self.links.iter().map(|l| l.name.as_str()),
            old_shards,
            self.fleet.shards,
        )
    }
}

fn describe_credentials(username: &Option<String>, password: &Option<PasswordSource>) -> String {
    match (username, password) {
        (Some(user), Some(source)) => format!(", username {user:?} with {}", source.describe()),
        (Some(user), None) => format!(", username {user:?}"),
        _ => String::new(),
    }
}

/// `tls  ca /etc/ferry/ca.pem, client certificate /etc/ferry/ferry.pem`, and
/// a loud warning when the broker's certificate is not verified.
fn describe_tls(tls: &crate::bridge::tls::TlsClient) -> String {
    let s = &tls.settings;
    let mut text = match &s.ca_file {
        Some(ca) => format!("tls  ca {}", ca.display()),
        None => "tls  ca: the system's trust store".to_owned(),
    };
    if let Some((cert, _)) = &s.client_auth {
        text.push_str(&format!(", client certificate {}", cert.display()));
    }
    if let Some(name) = &s.server_name {
        text.push_str(&format!(", server name {name:?}"));
    }
    if !s.alpn.is_empty() {
        text.push_str(&format!(", alpn {:?}", s.alpn));
    }
    if s.insecure_skip_verify {
        text.push_str("\n  WARNING: insecure_skip_verify = true: the broker's certificate is NOT verified");
    }
    text
}

/// `hosts  a:1883, b:1883 (in order; back to the first within 300s)`
fn describe_hosts(addresses: &[(String, u16)], failback: std::time::Duration) -> String {
    let list: Vec<String> = addresses.iter().map(|(host, port)| format!("{host}:{port}")).collect();
    format!(
        "hosts  {} (in order; back to the first within {}s of it answering)",
        list.join(", "),
        failback.as_secs()
    )
}
