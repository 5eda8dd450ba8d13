//! Parsers of single values: sizes ("8GiB"), drain rates ("2000/s",
//! "1MiB/s"), bounded integers, ports, listen addresses, the state topic
//! pattern, names (overflow, direction), hosts and client ids. Each returns the typed value or a [`Problem`] at the
//! value's span; checks across values are in `validate`.

use std::net::SocketAddr;
use std::str::FromStr;

use toml::Spanned;

use super::error::Problem;
use super::raw::RawSize;
use super::{DEFAULT_STATE_TOPIC, MAX_LINK_NAME_CHARS};
use crate::store::MaxBytes;
use crate::topic;

const SIZE_UNITS: [(&str, u64); 10] = [
    ("B", 1),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("", 1),
];

/// Parses a size such as "8GiB", "512 MB", "100" or "100B" into bytes.
/// KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB powers of 1024; units
/// are matched without regard to case.
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    let help = "write a whole number with an optional unit: B, KB, MB, GB, TB (powers of 1000) \
                or KiB, MiB, GiB, TiB (powers of 1024), like \"8GiB\"";
    let trimmed = text.trim();
    let digits_end = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    let unit = unit.trim_start();
    if digits.is_empty() {
        return Err(format!("{text:?} is not a size; {help}"));
    }
    let Some(&(_, multiplier)) = SIZE_UNITS.iter().find(|(name, _)| name.eq_ignore_ascii_case(unit)) else {
        return Err(format!("{text:?} has an unknown unit {unit:?}; {help}"));
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(multiplier))
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Formats a byte count with the largest unit that divides it exactly.
pub(super) fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 8] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("TB", 1_000_000_000_000),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1_000),
    ];
    if bytes > 0 {
        for (name, multiplier) in UNITS {
            if bytes % multiplier == 0 {
                return format!("{}{name}", bytes / multiplier);
            }
        }
    }
    format!("{bytes}B")
}

/// Parses a drain rate in messages per second, "2000/s", or "off" (None).
/// The admin API and `ferry link rate` read the same spelling.
pub(crate) fn parse_drain_rate(text: &str) -> Result<Option<u64>, String> {
    let help = "write a whole number of messages per second, like \"2000/s\", or \"off\"";
    per_second(text, help, |number| {
        number
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("{text:?} is not a rate; {help}"))
    })
}

/// Parses a drain rate in bytes per second, "1MiB/s" (a size per second),
/// or "off" (None).
pub(crate) fn parse_drain_bytes_rate(text: &str) -> Result<Option<u64>, String> {
    let help = "write a size per second, like \"1MiB/s\" or \"500KB/s\", or \"off\"";
    per_second(text, help, |size| {
        parse_size(size).map_err(|error| format!("{error}, then \"/s\" (a size per second), or \"off\""))
    })
}

fn per_second(text: &str, help: &str, number: impl FnOnce(&str) -> Result<u64, String>) -> Result<Option<u64>, String> {
    let trimmed = text.trim();
    if trimmed == "off" {
        return Ok(None);
    }
    let Some(amount) = trimmed.strip_suffix("/s") else {
        return Err(format!("{text:?} is not a rate (it must end in \"/s\"); {help}"));
    };
    match number(amount)? {
        0 => Err(format!(
            "{text:?}: a rate must be at least 1/s; to turn pacing off, write \"off\""
        )),
        rate => Ok(Some(rate)),
    }
}

/// A drain rate key (`drain_rate`, `drain_bytes_rate`) at its span.
pub(super) fn rate_value(
    key: &str,
    raw: &Spanned<String>,
    parse: fn(&str) -> Result<Option<u64>, String>,
) -> Result<Option<u64>, Problem> {
    parse(raw.get_ref()).map_err(|error| Problem::at(raw.span(), format!("{key}: {error}")))
}

pub(super) fn size_value(key: &str, raw: &Spanned<RawSize>) -> Result<u64, Problem> {
    let bytes = match raw.get_ref() {
        RawSize::Bytes(number) => u64::try_from(*number).map_err(|_| format!("{key} cannot be negative, got {number}")),
        RawSize::Text(text) => parse_size(text).map_err(|error| format!("{key}: {error}")),
    };
    bytes.map_err(|message| Problem::at(raw.span(), message))
}

/// `store_max_bytes`: a size, "auto" or "off" (0 is "off" too, like the
/// queue bounds' 0 = no limit).
pub(super) fn max_bytes_value(key: &str, raw: &Spanned<RawSize>) -> Result<MaxBytes, Problem> {
    match raw.get_ref() {
        RawSize::Text(text) if text.trim().eq_ignore_ascii_case("auto") => Ok(MaxBytes::Auto),
        RawSize::Text(text) if text.trim().eq_ignore_ascii_case("off") => Ok(MaxBytes::Off),
        _ => match size_value(key, raw) {
            Ok(0) => Ok(MaxBytes::Off),
            Ok(bytes) => Ok(MaxBytes::Bytes(bytes)),
            Err(problem) => Err(Problem {
                message: format!("{}, or \"auto\" or \"off\"", problem.message),
                ..problem
            }),
        },
    }
}

pub(super) fn integer_in(
    key: &str,
    raw: &Spanned<i64>,
    allowed: std::ops::RangeInclusive<i64>,
    meaning: &str,
) -> Result<u64, Problem> {
    let value = *raw.get_ref();
    if !allowed.contains(&value) {
        return Err(Problem::at(
            raw.span(),
            format!(
                "{key} must be between {} and {}{meaning}, got {value}",
                allowed.start(),
                allowed.end()
            ),
        ));
    }
    u64::try_from(value).map_err(|_| Problem::at(raw.span(), format!("{key} cannot be negative")))
}

pub(super) fn port_value(raw: &Spanned<i64>) -> Result<u16, Problem> {
    let port = integer_in("port", raw, 1..=65535, "")?;
    u16::try_from(port).map_err(|_| Problem::at(raw.span(), "port must be at most 65535"))
}

pub(super) fn non_empty(key: &str, raw: &Spanned<String>) -> Result<String, Problem> {
    if raw.get_ref().trim().is_empty() {
        return Err(Problem::at(raw.span(), format!("{key} cannot be empty")));
    }
    Ok(raw.get_ref().clone())
}

/// A name from a fixed set (`overflow`, `direction`), parsed by the type
/// that owns the names; its error lists them.
pub(super) fn name_value<T: FromStr<Err = String>>(raw: &Spanned<String>) -> Result<T, Problem> {
    raw.get_ref()
        .parse()
        .map_err(|message: String| Problem::at(raw.span(), message))
}

/// A broker's `host`: a host name or an IP address, not a URL and without
/// the port (which has its own key). The error shows the right form.
pub(super) fn host_value(raw: &Spanned<String>) -> Result<String, Problem> {
    let host = non_empty("host", raw)?;
    let (scheme, rest) = match host.split_once("://") {
        Some((scheme, rest)) => (Some(scheme.to_ascii_lowercase()), rest),
        None => (None, host.as_str()),
    };
    // What a URL or "name:port" holds: [user@]name[:port][/path].
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, after)| after);
    let (name, port) = match authority.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => (name, Some(port)),
        _ => (authority, None),
    };
    if scheme.is_none() && port.is_none() {
        return Ok(host);
    }
    let default_port = match scheme.as_deref() {
        Some("mqtts" | "ssl" | "tls" | "wss") => "8883",
        _ => "1883",
    };
    let port = port.filter(|port| !port.is_empty()).unwrap_or(default_port);
    let right_form = format!("host = \"{name}\" and port = {port}");
    let message = match scheme.as_deref() {
        None => format!("host {host:?} includes the port; write {right_form}"),
        Some("ws" | "wss") => format!(
            "host {host:?} is a WebSocket URL; ferry speaks MQTT over TCP: write {right_form} with the              broker's MQTT port"
        ),
        Some(_) => format!(
            "host {host:?} is a URL; ferry takes the host name and the port apart: write {right_form}              (a scheme does not choose TLS here; see docs/security.md)"
        ),
    };
    Err(Problem::at(raw.span(), message))
}

/// A client id as written (`[hub] client_id` or a link's): not empty, no
/// NUL (which MQTT forbids in strings).
pub(super) fn client_id_value(raw: &Spanned<String>) -> Result<String, Problem> {
    let id = non_empty("client_id", raw)?;
    if id.contains('\0') {
        return Err(Problem::at(
            raw.span(),
            "client_id contains a NUL character, which MQTT does not allow in a client id",
        ));
    }
    Ok(id)
}

pub(super) fn is_valid_link_name(name: &str) -> bool {
    (1..=MAX_LINK_NAME_CHARS).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}
/// `[<section>] listen`: an IP address with a port, or "off".
pub(super) fn listen_address(
    section: &str,
    raw: &Option<Spanned<String>>,
    default: &str,
) -> Result<Option<SocketAddr>, Problem> {
    match raw {
        None => default
            .parse()
            .map(Some)
            .map_err(|_| Problem::nowhere(format!("built-in {section} address is invalid"))),
        Some(listen) if listen.get_ref() == "off" => Ok(None),
        Some(listen) => listen.get_ref().parse::<SocketAddr>().map(Some).map_err(|_| {
            Problem::at(
                listen.span(),
                format!(
                    "{section} listen must be an IP address with a port, like \"{default}\", \
                     or \"off\"; got {:?}",
                    listen.get_ref()
                ),
            )
        }),
    }
}

/// `[hub] state_topic`: a topic with exactly one "{link}", or "off".
pub(super) fn state_topic(raw: &Option<Spanned<String>>) -> Result<Option<String>, Problem> {
    let Some(raw) = raw else {
        return Ok(Some(DEFAULT_STATE_TOPIC.to_owned()));
    };
    let pattern = raw.get_ref();
    if pattern == "off" {
        return Ok(None);
    }
    if pattern.matches("{link}").count() != 1 {
        return Err(Problem::at(
            raw.span(),
            format!(
                "state_topic must contain \"{{link}}\" exactly once (each link needs its own \
                 topic), like \"{DEFAULT_STATE_TOPIC}\", or be \"off\"; got {pattern:?}"
            ),
        ));
    }
    topic::validate_topic(&pattern.replace("{link}", "x"))
        .map(|()| Some(pattern.clone()))
        .map_err(|why| Problem::at(raw.span(), format!("state_topic {pattern:?}: {why}")))
}
