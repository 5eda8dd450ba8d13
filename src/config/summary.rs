//! The text `ferry check` prints: everything ferry understood from the file,
//! with defaults filled in and secrets left out (it says where each comes
//! from, never what it is).

use super::values::format_size;
use super::{Config, PasswordSource};

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
                describe_credentials(&link.username, &link.password_source)
            ));
            line(format!(
                "  keepalive {}s, reconnect {}ms..{}ms, inflight {}, max message {}",
                link.keepalive.as_secs(),
                link.reconnect_min.as_millis(),
                link.reconnect_max.as_millis(),
                link.inflight,
                format_size(u64::from(link.max_message_bytes))
            ));
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

fn describe_credentials(username: &Option<String>, password: &Option<PasswordSource>) -> String {
    match (username, password) {
        (Some(user), Some(source)) => format!(", username {user:?} with {}", source.describe()),
        (Some(user), None) => format!(", username {user:?}"),
        _ => String::new(),
    }
}
