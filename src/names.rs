//! The names ferry gives things: which way a message flows ([`Direction`]),
//! which broker a connection talks to ([`Side`]) and what it is for
//! ([`Role`]), and the client ids and queue names built from a link's name.
//!
//! These names appear in the config file, in metric labels, in the admin
//! API and on the brokers (client ids), and the queue names are the trees in
//! the store. Each is spelled here once: renaming one is a change of what
//! operators see and of what a running broker or store already holds.

use std::fmt;
use std::str::FromStr;

/// Which way a route carries messages. In the config (`direction = "out"`),
/// metric labels, queue names and the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Hub -> edge.
    Out,
    /// Edge -> hub.
    In,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Out, Direction::In];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

impl FromStr for Direction {
    type Err = String;

    fn from_str(text: &str) -> Result<Direction, String> {
        named(&Direction::ALL, Direction::as_str, text)
            .ok_or_else(|| format!("direction must be \"out\" (hub -> edge) or \"in\" (edge -> hub), got {text:?}"))
    }
}

/// Which MQTT version a connection speaks (`protocol` in the config, per
/// side). `Auto` tries MQTT 5 and falls back to 3.1.1 when the broker
/// refuses v5 (see `bridge::connection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    V5,
    V311,
    #[default]
    Auto,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::V5, Protocol::V311, Protocol::Auto];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::V5 => "5",
            Protocol::V311 => "3.1.1",
            Protocol::Auto => "auto",
        }
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Protocol, String> {
        named(&Protocol::ALL, Protocol::as_str, text).ok_or_else(|| {
            format!("protocol must be \"5\" (MQTT 5), \"3.1.1\" or \"auto\" (MQTT 5, else 3.1.1), got {text:?}")
        })
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which broker a connection talks to. A metric label (`side`) and a field
/// of the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Hub,
    Edge,
}

impl Side {
    pub const ALL: [Side; 2] = [Side::Hub, Side::Edge];

    pub fn as_str(self) -> &'static str {
        match self {
            Side::Hub => "hub",
            Side::Edge => "edge",
        }
    }
}

impl FromStr for Side {
    type Err = String;

    fn from_str(text: &str) -> Result<Side, String> {
        named(&Side::ALL, Side::as_str, text).ok_or_else(|| format!("side must be \"hub\" or \"edge\", got {text:?}"))
    }
}

/// What a connection is for. A metric label (`role`) and a field of the
/// admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Subscribes and receives: persistent session, manual acks.
    Ingest,
    /// Publishes the queue: clean session.
    Drain,
    /// Publishes the link's retained state; its last will marks it offline.
    State,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Ingest, Role::Drain, Role::State];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Drain => "drain",
            Role::State => "state",
        }
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        named(&Role::ALL, Role::as_str, text)
            .ok_or_else(|| format!("role must be \"ingest\", \"drain\" or \"state\", got {text:?}"))
    }
}

/// The value of `all` whose name is `text`: the inverse of `as_str`, so a
/// `FromStr` never spells the names a second time.
pub(crate) fn named<T: Copy>(all: &[T], name: fn(T) -> &'static str, text: &str) -> Option<T> {
    all.iter().copied().find(|&value| name(value) == text)
}

/// The hub client id ferry uses when `[hub] client_id` is not set.
pub(crate) const DEFAULT_HUB_CLIENT_ID: &str = "ferry-hub";

/// A link's client id on its edge broker when the config sets none:
/// "ferry-<name>".
pub(crate) fn default_edge_client_id(link: &str) -> String {
    format!("ferry-{link}")
}

/// The client id of a link's ingest connection to the hub:
/// "<hub client_id>-<link>". Persistent sessions hang on it, so it must stay
/// the same across restarts.
pub(crate) fn hub_client_id(hub_client_id: &str, link: &str) -> String {
    format!("{hub_client_id}-{link}")
}

/// The client id of a drain connection: the ingest id of that broker plus
/// "-pub" (a clean session beside the persistent one).
pub(crate) fn drain_client_id(client_id: &str) -> String {
    format!("{client_id}-pub")
}

/// The client id of a link's state connection to the hub: its hub client id
/// plus "-state".
pub(crate) fn state_client_id(hub_client_id: &str) -> String {
    format!("{hub_client_id}-state")
}

/// The queue name of a link's direction: "<link>/<out|in>".
pub fn queue_name(link: &str, direction: Direction) -> String {
    format!("{link}/{}", direction.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_to_their_values() {
        for direction in Direction::ALL {
            assert_eq!(direction.as_str().parse(), Ok(direction));
        }
        for side in Side::ALL {
            assert_eq!(side.as_str().parse(), Ok(side));
        }
        for role in Role::ALL {
            assert_eq!(role.as_str().parse(), Ok(role));
        }
        assert!("both".parse::<Direction>().unwrap_err().contains("got \"both\""));
        assert!("Hub".parse::<Side>().is_err());
    }

    #[test]
    fn client_ids_and_queue_names() {
        let hub = hub_client_id(DEFAULT_HUB_CLIENT_ID, "edge1");
        assert_eq!(hub, "ferry-hub-edge1");
        assert_eq!(drain_client_id(&hub), "ferry-hub-edge1-pub");
        assert_eq!(state_client_id(&hub), "ferry-hub-edge1-state");
        assert_eq!(default_edge_client_id("edge1"), "ferry-edge1");
        assert_eq!(queue_name("edge1", Direction::In), "edge1/in");
    }
}
