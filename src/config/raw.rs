//! The file as written, before validation: serde types that mirror the TOML.
//! Every value checked after parsing keeps its span so its error can name
//! its line. Unknown keys are refused here (`deny_unknown_fields`).

use std::fmt;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) data_dir: Option<Spanned<String>>,
    pub(super) store_cache: Option<Spanned<RawSize>>,
    pub(super) store_max_bytes: Option<Spanned<RawSize>>,
    pub(super) store_reserve_bytes: Option<Spanned<RawSize>>,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) hub: RawHub,
    #[serde(default)]
    pub(super) defaults: RawTuning,
    #[serde(default)]
    pub(super) links: Vec<Spanned<RawLink>>,
    pub(super) fleet: Option<RawFleet>,
}

/// `[fleet]`: `shard` is a number or "auto", checked in validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    pub(super) shards: Spanned<i64>,
    pub(super) shard: Spanned<toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) token_file: Option<Spanned<String>>,
}

/// The credential keys of one connection (`[hub]` or a link): a username
/// and at most one of the three ways to give its password.
pub(super) struct RawCredentials<'a> {
    pub(super) username: &'a Option<Spanned<String>>,
    pub(super) password: &'a Option<Spanned<String>>,
    pub(super) password_file: &'a Option<Spanned<String>>,
    pub(super) password_env: &'a Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHub {
    pub(super) host: Option<Spanned<String>>,
    pub(super) hosts: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) port: Option<Spanned<i64>>,
    pub(super) client_id: Option<Spanned<String>>,
    pub(super) username: Option<Spanned<String>>,
    pub(super) password: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<String>>,
    pub(super) password_env: Option<Spanned<String>>,
    pub(super) state_topic: Option<Spanned<String>>,
    pub(super) tls: Option<Spanned<RawTls>>,
    pub(super) failback_secs: Option<Spanned<i64>>,
    pub(super) protocol: Option<Spanned<String>>,
}

/// `[hub.tls]`, `[links.tls]`, `[defaults.tls]` (see `config/tls.rs`).
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) cert_file: Option<Spanned<String>>,
    pub(super) key_file: Option<Spanned<String>>,
    pub(super) server_name: Option<Spanned<String>>,
    pub(super) alpn: Option<Vec<String>>,
    pub(super) insecure_skip_verify: Option<Spanned<bool>>,
}

/// The per-link settings that `[defaults]` can set for every link.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTuning {
    pub(super) keepalive_secs: Option<Spanned<i64>>,
    pub(super) reconnect_min_ms: Option<Spanned<i64>>,
    pub(super) reconnect_max_ms: Option<Spanned<i64>>,
    pub(super) inflight: Option<Spanned<i64>>,
    pub(super) queue_max_bytes: Option<Spanned<RawSize>>,
    pub(super) queue_max_messages: Option<Spanned<i64>>,
    pub(super) overflow: Option<Spanned<String>>,
    pub(super) message_ttl_secs: Option<Spanned<i64>>,
    pub(super) max_message_bytes: Option<Spanned<RawSize>>,
    pub(super) drain_rate: Option<Spanned<String>>,
    pub(super) drain_bytes_rate: Option<Spanned<String>>,
    pub(super) ack_timeout_secs: Option<Spanned<i64>>,
    pub(super) tls: Option<Spanned<RawTls>>,
    pub(super) failback_secs: Option<Spanned<i64>>,
    pub(super) protocol: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLink {
    pub(super) name: Spanned<String>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) hosts: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) port: Option<Spanned<i64>>,
    pub(super) client_id: Option<Spanned<String>>,
    pub(super) username: Option<Spanned<String>>,
    pub(super) password: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<String>>,
    pub(super) password_env: Option<Spanned<String>>,
    pub(super) enabled: Option<bool>,
    #[serde(default)]
    pub(super) routes: Vec<Spanned<RawRoute>>,
    // The same keys as RawTuning: serde cannot combine `flatten` with
    // `deny_unknown_fields`, so they are repeated here.
    pub(super) keepalive_secs: Option<Spanned<i64>>,
    pub(super) reconnect_min_ms: Option<Spanned<i64>>,
    pub(super) reconnect_max_ms: Option<Spanned<i64>>,
    pub(super) inflight: Option<Spanned<i64>>,
    pub(super) queue_max_bytes: Option<Spanned<RawSize>>,
    pub(super) queue_max_messages: Option<Spanned<i64>>,
    pub(super) overflow: Option<Spanned<String>>,
    pub(super) message_ttl_secs: Option<Spanned<i64>>,
    pub(super) max_message_bytes: Option<Spanned<RawSize>>,
    pub(super) drain_rate: Option<Spanned<String>>,
    pub(super) drain_bytes_rate: Option<Spanned<String>>,
    pub(super) ack_timeout_secs: Option<Spanned<i64>>,
    pub(super) tls: Option<Spanned<RawTls>>,
    pub(super) failback_secs: Option<Spanned<i64>>,
    pub(super) protocol: Option<Spanned<String>>,
}

impl RawHub {
    pub(super) fn credentials(&self) -> RawCredentials<'_> {
        RawCredentials {
            username: &self.username,
            password: &self.password,
            password_file: &self.password_file,
            password_env: &self.password_env,
        }
    }
}

impl RawLink {
    pub(super) fn credentials(&self) -> RawCredentials<'_> {
        RawCredentials {
            username: &self.username,
            password: &self.password,
            password_file: &self.password_file,
            password_env: &self.password_env,
        }
    }

    pub(super) fn tuning(&self) -> RawTuning {
        RawTuning {
            keepalive_secs: self.keepalive_secs.clone(),
            reconnect_min_ms: self.reconnect_min_ms.clone(),
            reconnect_max_ms: self.reconnect_max_ms.clone(),
            inflight: self.inflight.clone(),
            queue_max_bytes: self.queue_max_bytes.clone(),
            queue_max_messages: self.queue_max_messages.clone(),
            overflow: self.overflow.clone(),
            message_ttl_secs: self.message_ttl_secs.clone(),
            max_message_bytes: self.max_message_bytes.clone(),
            drain_rate: self.drain_rate.clone(),
            drain_bytes_rate: self.drain_bytes_rate.clone(),
            ack_timeout_secs: self.ack_timeout_secs.clone(),
            tls: self.tls.clone(),
            failback_secs: self.failback_secs.clone(),
            protocol: self.protocol.clone(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) direction: Spanned<String>,
    pub(super) local: Spanned<String>,
    pub(super) remote: Spanned<String>,
    pub(super) qos: Option<Spanned<i64>>,
}

/// A size as written: a number of bytes, or a string with a unit ("8GiB").
#[derive(Clone)]
pub(super) enum RawSize {
    Bytes(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl serde::de::Visitor<'_> for SizeVisitor {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: a number of bytes like 1048576, or a string like \"16MiB\"")
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(value))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<RawSize, E> {
                i64::try_from(value)
                    .map(RawSize::Bytes)
                    .map_err(|_| E::custom(format!("size {value} is too large")))
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(value.to_owned()))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}
