//! MQTT 3.1.1 under the MQTT 5 types: the adapter that lets one connection
//! task, ingest, drain and the state topic speak either version.
//!
//! ferry's forwarding code is written against rumqttc's v5 types. A 3.1.1
//! connection runs rumqttc's v4 client and event loop; what it receives is
//! converted here into the v5 `Event`/`Packet` values the owners match on
//! (a PUBLISH without properties, a PUBACK with reason Success, ...), and
//! [`Client`] takes the owners' v5 requests to either client.
//!
//! What 3.1.1 cannot carry is dropped on the way out, on purpose: the v5
//! properties of a message (user properties, content type, response topic,
//! correlation data, payload format) and its message expiry interval (the
//! queue's own `message_ttl` still applies). A 3.1.1 PUBLISH has no
//! subscription identifiers either, so ingest routes it by matching its
//! topic against the route filters. There is no No Local: the config's loop
//! check is the protection. There is no Receive Maximum: the outgoing
//! window starts at `inflight` and grows with a backlog ([`super::window`]).
//!
//! Which version a connection speaks is chosen by [`Choice`]: `protocol =
//! "auto"` tries MQTT 5 first and falls back to 3.1.1 at once when the
//! broker refuses v5 ([`refuses_v5`]).

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, Packet, PingReq, PingResp, PubAck, PubAckReason,
    PubComp, PubCompReason, PubRec, PubRecReason, PubRel, PubRelReason, Publish, PublishProperties, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{self, Event};

use crate::names::{Protocol, Role};

use super::connection::ConnectionSpec;

/// The MQTT version a connection attempt speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V5,
    V311,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V5 => "5",
            Version::V311 => "3.1.1",
        }
    }
}

/// Which version the next attempt of one connection speaks.
///
/// `auto` prefers MQTT 5 for every connection: it carries the message
/// properties, subscription identifiers and No Local. A broker that refuses
/// v5 is tried again at once over 3.1.1, and 3.1.1 is kept for that
/// connection until a 3.1.1 attempt fails to connect for another reason;
/// then v5 is tried first again (the broker may have been upgraded).
/// A drain that `auto` moved to 3.1.1 because the broker's Receive Maximum
/// capped it ([`Choice::speak_v311`]) keeps 3.1.1 the same way, until a
/// message with MQTT 5 properties comes up: then it moves back to MQTT 5
/// ([`Choice::speak_v5`]) and stays there (for the life of the link task).
#[derive(Debug, Clone, Copy)]
pub struct Choice {
    configured: Protocol,
    fell_back: bool,
    /// The fallback is `auto`'s answer to a Receive Maximum cap (not a
    /// broker that refuses v5): MQTT 5 remains possible.
    capped: bool,
    /// A message needed MQTT 5 properties: no more switching to 3.1.1.
    needs_v5: bool,
}

impl Choice {
    pub fn new(configured: Protocol) -> Choice {
        Choice {
            configured,
            fell_back: false,
            capped: false,
            needs_v5: false,
        }
    }

    pub fn next(&self) -> Version {
        match self.configured {
            Protocol::V5 => Version::V5,
            Protocol::V311 => Version::V311,
            Protocol::Auto if self.fell_back => Version::V311,
            Protocol::Auto => Version::V5,
        }
    }

    /// A v5 attempt was refused as a protocol version: whether to retry
    /// at once with 3.1.1.
    pub fn v5_refused(&mut self) -> bool {
        if self.configured == Protocol::Auto && !self.fell_back {
            self.fell_back = true;
            self.capped = false;
            return true;
        }
        false
    }

    /// Whether `auto` may move this connection to 3.1.1 to lift a Receive
    /// Maximum cap: no message has needed MQTT 5 properties.
    pub fn may_lift_cap(&self) -> bool {
        self.configured == Protocol::Auto && !self.needs_v5
    }

    /// `auto`: the next attempts speak 3.1.1 (a drain capped by the broker's
    /// Receive Maximum, see [`super::window`]). Whether `auto` allows it.
    pub fn speak_v311(&mut self) -> bool {
        if !self.may_lift_cap() {
            return false;
        }
        self.fell_back = true;
        self.capped = true;
        true
    }

    /// This 3.1.1 connection is `auto`'s answer to a cap, so a message
    /// with MQTT 5 properties may move it back to MQTT 5.
    pub fn may_speak_v5(&self) -> bool {
        self.configured == Protocol::Auto && self.fell_back && self.capped
    }

    /// A message needs MQTT 5 properties: the next attempts speak MQTT 5,
    /// for good. Whether this connection may (see [`Choice::may_speak_v5`]).
    pub fn speak_v5(&mut self) -> bool {
        if !self.may_speak_v5() {
            return false;
        }
        self.fell_back = false;
        self.capped = false;
        self.needs_v5 = true;
        true
    }

    /// An attempt failed to connect for another reason.
    pub fn failed(&mut self) {
        self.fell_back = false;
        self.capped = false;
    }
}

/// Whether a v5 CONNECT failed because the broker does not speak MQTT 5.
/// What rumqttc 0.25.1 reports (see the test below): a CONNACK with reason
/// 0x84 (unsupported protocol version) is `ConnectionRefused(Unsupported
/// ProtocolVersion)`; a 3.1.1 CONNACK with return code 1 is too short for
/// the v5 parser, which waits for more until the broker closes the
/// connection (as 3.1.1 says it must): `MqttState(ConnectionAborted)`, as
/// is a connection closed right after CONNECT without any answer. A reset
/// connection and a packet the v5 parser refuses count as well. Only asked
/// about the first answer to a CONNECT, after TCP connected.
pub fn refuses_v5(e: &v5::ConnectionError) -> bool {
    use std::io::ErrorKind;
    use v5::{ConnectionError as E, StateError as S};
    match e {
        E::ConnectionRefused(
            ConnectReturnCode::UnsupportedProtocolVersion | ConnectReturnCode::RefusedProtocolVersion,
        ) => true,
        E::MqttState(S::Deserialization(_) | S::ConnectionAborted) => true,
        E::MqttState(S::Io(io)) => matches!(
            io.kind(),
            ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::ConnectionAborted
        ),
        _ => false,
    }
}

/// A connection's client, of either version, taking v5 requests.
#[derive(Debug, Clone)]
pub enum Client {
    V5(v5::AsyncClient),
    V4(rumqttc::AsyncClient),
}

/// A request the connection task could not queue (it is closing, or full).
#[derive(Debug)]
pub struct ClientError(String);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClientError {}

fn err(e: impl std::fmt::Display) -> ClientError {
    ClientError(e.to_string())
}

impl Client {
    pub fn is_v311(&self) -> bool {
        matches!(self, Client::V4(_))
    }

    /// Acknowledges a received message (its packet id and QoS).
    pub fn try_ack(&self, p: &Publish) -> Result<(), ClientError> {
        match self {
            Client::V5(c) => c.try_ack(p).map_err(err),
            Client::V4(c) => c.try_ack(&v4_publish(p)).map_err(err),
        }
    }

    /// Publishes; over 3.1.1 `props` is dropped (see the module doc).
    pub async fn publish_with_properties(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        props: PublishProperties,
    ) -> Result<(), ClientError> {
        match self {
            Client::V5(c) => c
                .publish_with_properties(topic, qos, retain, payload, props)
                .await
                .map_err(err),
            Client::V4(c) => c.publish(topic, v4_qos(qos), retain, payload).await.map_err(err),
        }
    }

    pub fn try_publish(&self, topic: String, qos: QoS, retain: bool, payload: Vec<u8>) -> Result<(), ClientError> {
        match self {
            Client::V5(c) => c.try_publish(topic, qos, retain, payload).map_err(err),
            Client::V4(c) => c.try_publish(topic, v4_qos(qos), retain, payload).map_err(err),
        }
    }

    pub fn try_disconnect(&self) -> Result<(), ClientError> {
        match self {
            Client::V5(c) => c.try_disconnect().map_err(err),
            Client::V4(c) => c.try_disconnect().map_err(err),
        }
    }
}

/// A connection's event loop, of either version, yielding v5 events.
// One per connection attempt, never moved in a hot path: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum EventLoop {
    V5(v5::EventLoop),
    V4(rumqttc::EventLoop),
}

/// Why polling failed: the error's text, and whether it was a v5 CONNECT
/// refused as a protocol version.
#[derive(Debug)]
pub struct PollError {
    pub text: String,
    pub refuses_v5: bool,
}

impl std::fmt::Display for PollError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl EventLoop {
    pub async fn poll(&mut self) -> Result<Event, PollError> {
        match self {
            EventLoop::V5(l) => l.poll().await.map_err(|e| PollError {
                refuses_v5: refuses_v5(&e),
                text: crate::bridge::tls::describe(&e),
            }),
            EventLoop::V4(l) => l.poll().await.map(v5_event).map_err(|e| PollError {
                text: crate::bridge::tls::describe(&e),
                refuses_v5: false,
            }),
        }
    }
}

impl EventLoop {
    /// Replaces rumqttc's outgoing in-flight state by one with room for
    /// `window` publishes (on v5 the caller keeps it within the broker's
    /// Receive Maximum, which a new state no longer knows). rumqttc sizes
    /// that state once, at connect; a new one is safe only while it holds
    /// nothing: no publish or release in flight, no event not yet returned,
    /// no collision, no request kept from an earlier session. Returns
    /// whether it was replaced (false: not idle, try later).
    pub fn resize(&mut self, window: u16) -> bool {
        match self {
            EventLoop::V5(l) => {
                let s = &l.state;
                if s.inflight() != 0 || !s.events.is_empty() || s.collision.is_some() || !l.pending.is_empty() {
                    return false;
                }
                let mut new = v5::MqttState::new(window, s.manual_acks);
                new.events = std::collections::VecDeque::new(); // grows as needed (see connection.rs, memory)
                new.await_pingresp = s.await_pingresp;
                new.broker_topic_alias_max = s.broker_topic_alias_max;
                l.state = new;
                l.options.set_outgoing_inflight_upper_limit(window);
            }
            EventLoop::V4(l) => {
                let s = &l.state;
                if s.inflight() != 0 || !s.events.is_empty() || s.collision.is_some() || !l.pending.is_empty() {
                    return false;
                }
                let mut new = rumqttc::MqttState::new(window, s.manual_acks);
                new.events = std::collections::VecDeque::new();
                new.await_pingresp = s.await_pingresp;
                l.state = new;
                // The v4 event loop reads its window from the options.
                l.mqtt_options.set_inflight(window);
            }
        }
        true
    }
}

/// A client and event loop of `version` for `spec`, with the v5 options
/// `v5_options` or their 3.1.1 equivalent.
pub fn connect(
    spec: &ConnectionSpec,
    version: Version,
    v5_options: v5::MqttOptions,
    capacity: usize,
) -> (Client, EventLoop) {
    match version {
        Version::V5 => {
            let (c, l) = v5::AsyncClient::new(v5_options, capacity);
            (Client::V5(c), EventLoop::V5(l))
        }
        Version::V311 => {
            let (c, mut l) = rumqttc::AsyncClient::new(options(spec, &v5_options), capacity);
            let mut network = rumqttc::NetworkOptions::new();
            network.set_connection_timeout(v5_options.connection_timeout());
            l.set_network_options(network);
            (Client::V4(c), EventLoop::V4(l))
        }
    }
}

/// The 3.1.1 options of a connection: the same identity, keepalive and
/// acks as its v5 options. An ingest session is persistent
/// (clean_session=false; in 3.1.1 it never expires), a drain's is clean.
/// The outgoing window starts at `spec.outgoing_inflight()` (a drain's
/// `inflight`, grown later by `window.rs`; ingest's SUBSCRIBEs only). 3.1.1
/// has no Receive Maximum: the broker's own limit bounds what it sends.
fn options(spec: &ConnectionSpec, v5_options: &v5::MqttOptions) -> rumqttc::MqttOptions {
    let (host, port) = v5_options.broker_address();
    let mut o = rumqttc::MqttOptions::new(v5_options.client_id(), host, port);
    o.set_keep_alive(spec.keepalive);
    o.set_manual_acks(spec.role == Role::Ingest);
    o.set_clean_session(spec.role != Role::Ingest);
    o.set_inflight(spec.outgoing_inflight());
    let max = spec.max_packet_bytes as usize;
    o.set_max_packet_size(max, max);
    o.set_transport(v5_options.transport());
    if let Some((user, pass)) = v5_options.credentials().map(|l| (l.username, l.password)) {
        o.set_credentials(user, pass);
    }
    if let Some(will) = &spec.will {
        o.set_last_will(rumqttc::LastWill {
            topic: String::from_utf8_lossy(&will.topic).into_owned(),
            message: will.message.clone(),
            qos: v4_qos(will.qos),
            retain: will.retain,
        });
    }
    o
}

fn v4_qos(q: QoS) -> rumqttc::QoS {
    match q {
        QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    }
}

fn v5_qos(q: rumqttc::QoS) -> QoS {
    match q {
        rumqttc::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// The 3.1.1 form of an acknowledgement's publish (only pkid and QoS count).
fn v4_publish(p: &Publish) -> rumqttc::Publish {
    let mut v4 = rumqttc::Publish::new("", v4_qos(p.qos), Vec::new());
    v4.pkid = p.pkid;
    v4
}

/// A 3.1.1 event as the v5 event ingest and drain match on. Acks carry
/// reason Success (3.1.1 has no negative PUBACK); a PUBLISH has no properties.
pub fn v5_event(event: rumqttc::Event) -> Event {
    use rumqttc::Packet as P4;
    let packet = match event {
        rumqttc::Event::Outgoing(o) => return Event::Outgoing(o),
        rumqttc::Event::Incoming(p) => p,
    };
    Event::Incoming(match packet {
        P4::ConnAck(a) => Packet::ConnAck(ConnAck {
            session_present: a.session_present,
            code: ConnectReturnCode::Success,
            properties: None,
        }),
        P4::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: v5_qos(p.qos),
            retain: p.retain,
            topic: Bytes::from(p.topic),
            pkid: p.pkid,
            payload: p.payload,
            properties: None,
        }),
        P4::PubAck(a) => Packet::PubAck(PubAck {
            pkid: a.pkid,
            reason: PubAckReason::Success,
            properties: None,
        }),
        P4::PubRec(a) => Packet::PubRec(PubRec {
            pkid: a.pkid,
            reason: PubRecReason::Success,
            properties: None,
        }),
        P4::PubRel(a) => Packet::PubRel(PubRel {
            pkid: a.pkid,
            reason: PubRelReason::Success,
            properties: None,
        }),
        P4::PubComp(a) => Packet::PubComp(PubComp {
            pkid: a.pkid,
            reason: PubCompReason::Success,
            properties: None,
        }),
        P4::SubAck(a) => Packet::SubAck(SubAck {
            pkid: a.pkid,
            return_codes: a
                .return_codes
                .into_iter()
                .map(|c| match c {
                    rumqttc::SubscribeReasonCode::Success(q) => SubscribeReasonCode::Success(v5_qos(q)),
                    rumqttc::SubscribeReasonCode::Failure => SubscribeReasonCode::Failure,
                })
                .collect(),
            properties: None,
        }),
        P4::UnsubAck(a) => Packet::UnsubAck(UnsubAck {
            pkid: a.pkid,
            reasons: Vec::new(),
            properties: None,
        }),
        P4::PingResp => Packet::PingResp(PingResp),
        P4::Disconnect => Packet::Disconnect(Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
            properties: None,
        }),
        // A broker never sends these; shown as what they are closest to.
        P4::Connect(_) | P4::Subscribe(_) | P4::Unsubscribe(_) | P4::PingReq => Packet::PingReq(PingReq),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_lifts_a_cap_with_3_1_1_until_a_message_needs_mqtt_5() {
        let mut c = Choice::new(Protocol::Auto);
        assert_eq!(c.next(), Version::V5);
        assert!(c.may_lift_cap() && !c.may_speak_v5());
        assert!(c.speak_v311());
        assert_eq!(c.next(), Version::V311);
        assert!(c.may_speak_v5(), "a cap's 3.1.1 may go back to MQTT 5");
        assert!(c.speak_v5());
        assert_eq!(c.next(), Version::V5);
        assert!(!c.may_lift_cap() && !c.speak_v311(), "MQTT 5 for good");
        c.failed();
        assert!(!c.speak_v311(), "also after a failed attempt");

        // A broker that refuses v5 gives 3.1.1 that cannot go back.
        let mut refused = Choice::new(Protocol::Auto);
        assert!(refused.v5_refused());
        assert!(!refused.may_speak_v5() && !refused.speak_v5());
        assert_eq!(refused.next(), Version::V311);
        // Configured versions never switch.
        let mut five = Choice::new(Protocol::V5);
        assert!(!five.speak_v311() && !five.may_lift_cap());
        let mut three = Choice::new(Protocol::V311);
        assert!(!three.speak_v5());
    }

    #[test]
    fn a_3_1_1_publish_becomes_a_v5_publish_without_properties() {
        let mut p = rumqttc::Publish::new("site/1/temp", rumqttc::QoS::AtLeastOnce, b"21.5".to_vec());
        p.pkid = 7;
        p.retain = true;
        let Event::Incoming(Packet::Publish(v5)) = v5_event(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))
        else {
            panic!("not a publish");
        };
        assert_eq!(&v5.topic[..], b"site/1/temp");
        assert_eq!(&v5.payload[..], b"21.5");
        assert_eq!((v5.pkid, v5.qos, v5.retain, v5.dup), (7, QoS::AtLeastOnce, true, false));
        assert!(v5.properties.is_none(), "no subscription ids: ingest routes by topic");
    }

    #[test]
    fn acks_of_3_1_1_become_v5_successes() {
        let ack = v5_event(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(rumqttc::PubAck::new(
            9,
        ))));
        assert!(matches!(
            ack,
            Event::Incoming(Packet::PubAck(PubAck {
                pkid: 9,
                reason: PubAckReason::Success,
                ..
            }))
        ));
        let comp = v5_event(rumqttc::Event::Incoming(rumqttc::Packet::PubComp(
            rumqttc::PubComp::new(3),
        )));
        assert!(matches!(
            comp,
            Event::Incoming(Packet::PubComp(PubComp {
                pkid: 3,
                reason: PubCompReason::Success,
                ..
            }))
        ));
        let suback = rumqttc::SubAck::new(
            2,
            vec![
                rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce),
                rumqttc::SubscribeReasonCode::Failure,
            ],
        );
        let Event::Incoming(Packet::SubAck(s)) = v5_event(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(suback)))
        else {
            panic!("not a suback");
        };
        assert_eq!(
            s.return_codes,
            vec![
                SubscribeReasonCode::Success(QoS::AtLeastOnce),
                SubscribeReasonCode::Failure
            ]
        );
        assert!(matches!(
            v5_event(rumqttc::Event::Incoming(rumqttc::Packet::PingResp)),
            Event::Incoming(Packet::PingResp(_))
        ));
        assert!(matches!(
            v5_event(rumqttc::Event::Incoming(rumqttc::Packet::Disconnect)),
            Event::Incoming(Packet::Disconnect(_))
        ));
        assert!(matches!(
            v5_event(rumqttc::Event::Outgoing(rumqttc::Outgoing::PubAck(4))),
            Event::Outgoing(rumqttc::Outgoing::PubAck(4))
        ));
    }

    #[test]
    fn auto_falls_back_to_3_1_1_once_and_tries_5_again_after_another_failure() {
        let mut c = Choice::new(Protocol::Auto);
        assert_eq!(c.next(), Version::V5);
        assert!(c.v5_refused());
        assert_eq!(c.next(), Version::V311);
        assert!(!c.v5_refused(), "no second fallback in a row");
        c.failed();
        assert_eq!(c.next(), Version::V5);
        let mut forced = Choice::new(Protocol::V5);
        assert!(!forced.v5_refused());
        assert_eq!(Choice::new(Protocol::V311).next(), Version::V311);
    }

    #[test]
    fn a_v5_refusal_is_told_from_other_errors() {
        use v5::ConnectionError as E;
        assert!(refuses_v5(&E::ConnectionRefused(
            ConnectReturnCode::UnsupportedProtocolVersion
        )));
        assert!(refuses_v5(&E::MqttState(v5::StateError::ConnectionAborted)));
        assert!(!refuses_v5(&E::ConnectionRefused(ConnectReturnCode::NotAuthorized)));
        assert!(!refuses_v5(&E::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        ))));
    }

    /// What rumqttc's v5 client reports when a 3.1.1-only broker answers
    /// its CONNECT: each is recognised as a refusal of v5.
    #[tokio::test]
    async fn what_a_3_1_1_only_broker_answers_is_recognised() {
        // A 3.1.1 CONNACK "unacceptable protocol version"; a v5 CONNACK with
        // reason 0x84; nothing at all (the connection is closed).
        for answer in [&[0x20u8, 0x02, 0x00, 0x01][..], &[0x20, 0x03, 0x00, 0x84, 0x00], &[]] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(answer).await;
            });
            let (_client, mut eventloop) = v5::AsyncClient::new(v5::MqttOptions::new("t", "127.0.0.1", port), 10);
            let error = match tokio::time::timeout(std::time::Duration::from_secs(10), eventloop.poll()).await {
                Ok(Err(e)) => e,
                other => panic!("answer {answer:?}: expected an error, got {other:?}"),
            };
            assert!(refuses_v5(&error), "answer {answer:?}: {error:?} not recognised");
            let _ = server.await;
        }
    }
}
