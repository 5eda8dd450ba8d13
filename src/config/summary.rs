//! The text `ferry check` prints: everything ferry understood from the file,
//! with defaults filled in and passwords left out.

use super::values::format_size;
use super::Config;
use crate::cli::render::format_bytes;
use crate::secret::Secret;
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
            Some(address) => format!("admin     http://{address}/v1/links"),
            None => "admin     off".to_owned(),
        });
        let hub = &self.hub;
        line(format!(
            "hub       {}:{}  client id {:?} (each link adds \"-<name>\"){}",
            hub.host,
            hub.port,
            hub.client_id,
            describe_credentials(&hub.username, &hub.password)
        ));
        line(match &hub.state_topic {
            Some(pattern) => format!("state     retained on the hub at {pattern:?}"),
            None => "state     off".to_owned(),
        });
        line(format!(
            "{} link{}",
            self.links.len(),
            if self.links.len() == 1 { "" } else { "s" }
        ));
        for link in &self.links {
            line(String::new());
            line(format!(
                "link {}  {}:{}  {}",
                link.name,
                link.host,
                link.port,
                if link.enabled { "enabled" } else { "disabled" }
            ));
            line(format!(
                "  client ids  edge {:?}, hub {:?}{}",
                link.client_id,
                link.hub_client_id(hub),
                describe_credentials(&link.username, &link.password)
            ));
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
}

fn describe_credentials(username: &Option<String>, password: &Option<Secret>) -> String {
    match (username, password) {
        (Some(user), Some(_)) => format!(", username {user:?} with password"),
        (Some(user), None) => format!(", username {user:?}"),
        _ => String::new(),
    }
}
