//! A scripted MQTT v5 peer: a tiny "broker" that misbehaves on purpose,
//! for what mosquitto cannot be made to do (ignore the Receive Maximum on a
//! schedule, answer PUBACKs with chosen reason codes, never acknowledge).
//!
//! It serves one client at a time on a free 127.0.0.1 port, with packets
//! framed by rumqttc's own `mqttbytes`. What it does is a [`PeerScript`]:
//! - as a **source** (`publish_on_subscribe`): after a SUBSCRIBE, it sends
//!   every message of its "session" that the client has not acknowledged yet,
//!   in order, all at once, whatever Receive Maximum the client announced,
//!   and sends them again (DUP) after a reconnect, as a persistent session
//!   would;
//! - as a **destination** (`ack`): each PUBLISH received is answered with the
//!   PUBACK reason the script returns for it, or not at all.
//!
//! CONNACK announces `max_packet_size` and `receive_maximum` when set.
//! With `refuse_v5` the peer is a 3.1.1-only broker: it answers a v5 CONNECT
//! with CONNACK reason 0x84 (unsupported protocol version) and closes, and
//! serves a 3.1.1 client in either role (see [`serve_v311`]).
//! PINGREQ is always answered. Everything it saw is in [`PeerState`].
//! Self-contained: std, tokio and rumqttc's `mqttbytes` only.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Packet, PingResp, PubAck, PubAckReason, Publish, SubAck,
    SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the peer should answer to the `n`-th PUBLISH it received (counted
/// from 0 over all connections) on connection number `conn` (from 1).
/// `None`: no PUBACK at all.
pub type AckFn = dyn Fn(u64, u64) -> Option<PubAckReason> + Send + Sync;

#[derive(Clone)]
pub struct PeerScript {
    pub max_packet_size: Option<u32>,
    pub receive_maximum: Option<u16>,
    /// Source role: `(topic, count, payload size)`; payloads are `seq_payload`.
    pub publish_on_subscribe: Option<(String, u64, usize)>,
    /// Source role: message `i` goes out on this topic instead (a bad one).
    pub bad_topic_at: Option<(u64, String)>,
    /// Destination role: the PUBACK reason for each PUBLISH received.
    pub ack: Arc<AckFn>,
    /// Speak only MQTT 3.1.1 (see the module doc).
    pub refuse_v5: bool,
}

impl Default for PeerScript {
    fn default() -> Self {
        PeerScript {
            max_packet_size: None,
            receive_maximum: None,
            publish_on_subscribe: None,
            bad_topic_at: None,
            ack: Arc::new(|_, _| Some(PubAckReason::Success)),
            refuse_v5: false,
        }
    }
}

impl PeerScript {
    /// Destination role: PUBLISH number `n` (counted from 0 over all
    /// connections) is answered with `reason` where `which(n)`, with
    /// Success otherwise.
    pub fn refuse(reason: PubAckReason, which: impl Fn(u64) -> bool + Send + Sync + 'static) -> PeerScript {
        PeerScript {
            ack: Arc::new(move |n, _| Some(if which(n) { reason } else { PubAckReason::Success })),
            ..PeerScript::default()
        }
    }
}

/// Everything the peer saw.
#[derive(Debug, Default, Clone)]
pub struct PeerState {
    /// Connections accepted (CONNECT received).
    pub connections: u64,
    /// Receive Maximum the client announced on its last CONNECT.
    pub client_receive_maximum: Option<u16>,
    /// PUBLISHes received (destination role), in order: (connection, payload).
    pub received: Vec<(u64, Vec<u8>)>,
    /// Payloads of PUBLISHes answered with a success PUBACK, in order.
    pub accepted: Vec<Vec<u8>>,
    /// PUBLISHes sent (source role), including resends.
    pub sent: u64,
    /// Most messages sent and not yet acknowledged at any moment (source role).
    pub max_unacked: u64,
    /// Session messages (source role) the client acknowledged.
    pub acked: u64,
    pub pings: u64,
    /// v5 CONNECTs refused (`refuse_v5`).
    pub refused_v5: u64,
    /// 3.1.1 CONNECTs accepted (`refuse_v5`).
    pub connections_v311: u64,
}

pub struct Peer {
    addr: SocketAddr,
    state: Arc<Mutex<PeerState>>,
    task: JoinHandle<()>,
}

impl Peer {
    pub async fn start(script: PeerScript) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("Peer: cannot bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("Peer: no local address: {e}"));
        let state = Arc::new(Mutex::new(PeerState::default()));
        let session = Arc::new(Mutex::new(Session::new(&script)));
        let task = {
            let state = state.clone();
            tokio::spawn(async move {
                // One client at a time: a new connection replaces the old one.
                let mut current: Option<JoinHandle<()>> = None;
                while let Ok((socket, _)) = listener.accept().await {
                    if let Some(old) = current.take() {
                        old.abort();
                    }
                    let _ = socket.set_nodelay(true);
                    current = Some(tokio::spawn(serve(
                        socket,
                        script.clone(),
                        state.clone(),
                        session.clone(),
                    )));
                }
            })
        };
        Peer { addr, state, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn state(&self) -> PeerState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The source role's persistent session: which messages are acknowledged.
struct Session {
    acked: Vec<bool>,
    /// Packet id -> message index, for what is on the wire.
    on_wire: std::collections::HashMap<u16, usize>,
    subscribed: bool,
}

impl Session {
    fn new(script: &PeerScript) -> Session {
        let n = script.publish_on_subscribe.as_ref().map_or(0, |(_, n, _)| *n as usize);
        Session {
            acked: vec![false; n],
            on_wire: Default::default(),
            subscribed: false,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn serve(socket: TcpStream, script: PeerScript, state: Arc<Mutex<PeerState>>, session: Arc<Mutex<Session>>) {
    // Reading goes on while a long burst is being written, as in a real broker.
    let (mut socket, mut writer) = socket.into_split();
    let (wire_tx, mut wire_rx) = tokio::sync::mpsc::unbounded_channel::<BytesMut>();
    let write_task = tokio::spawn(async move {
        while let Some(wire) = wire_rx.recv().await {
            if writer.write_all(&wire).await.is_err() {
                return;
            }
        }
    });
    let _write_task = AbortOnDrop(write_task);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut conn = 0u64;
    if script.refuse_v5 {
        let level = loop {
            if let Some(level) = connect_level(&buf) {
                break level;
            }
            match tokio::time::timeout(Duration::from_secs(60), socket.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        };
        if level != 4 {
            lock(&state).refused_v5 += 1;
            let refusal = Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::UnsupportedProtocolVersion,
                properties: None,
            });
            let mut wire = BytesMut::new();
            if refusal.write(&mut wire, None).is_ok() {
                let _ = wire_tx.send(wire);
            }
            // Let the writer send it, then close.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        }
        return serve_v311(socket, buf, &script, &state, &session, &wire_tx).await;
    }
    loop {
        let packet = loop {
            match Packet::read(&mut buf, None) {
                Ok(p) => break p,
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(_) => return,
            }
            match tokio::time::timeout(Duration::from_secs(600), socket.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        };
        let mut out: Vec<Packet> = Vec::new();
        match packet {
            Packet::Connect(connect, _, _) => {
                let session_present = {
                    let mut st = lock(&state);
                    st.connections += 1;
                    conn = st.connections;
                    st.client_receive_maximum = connect.properties.as_ref().and_then(|p| p.receive_maximum);
                    !connect.clean_start && st.connections > 1
                };
                let properties = ConnAckProperties {
                    max_packet_size: script.max_packet_size,
                    receive_max: script.receive_maximum,
                    ..empty_connack_properties()
                };
                out.push(Packet::ConnAck(ConnAck {
                    session_present,
                    code: ConnectReturnCode::Success,
                    properties: Some(properties),
                }));
                if session_present && lock(&session).subscribed {
                    out.extend(resend_unacked(&script, &state, &session));
                }
            }
            Packet::Subscribe(sub) => {
                out.push(Packet::SubAck(SubAck {
                    pkid: sub.pkid,
                    return_codes: sub
                        .filters
                        .iter()
                        .map(|_| SubscribeReasonCode::Success(QoS::AtLeastOnce))
                        .collect(),
                    properties: None,
                }));
                lock(&session).subscribed = true;
                out.extend(resend_unacked(&script, &state, &session));
            }
            Packet::PingReq(_) => {
                lock(&state).pings += 1;
                out.push(Packet::PingResp(PingResp));
            }
            Packet::PubAck(ack) => {
                let mut s = lock(&session);
                if let Some(i) = s.on_wire.remove(&ack.pkid) {
                    if !s.acked[i] {
                        s.acked[i] = true;
                        lock(&state).acked += 1;
                    }
                }
            }
            Packet::Publish(p) => {
                let n = {
                    let mut st = lock(&state);
                    st.received.push((conn, p.payload.to_vec()));
                    st.received.len() as u64 - 1
                };
                if p.qos != QoS::AtMostOnce {
                    if let Some(reason) = (script.ack)(n, conn) {
                        if matches!(reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers) {
                            lock(&state).accepted.push(p.payload.to_vec());
                        }
                        let mut ack = PubAck::new(p.pkid, None);
                        ack.reason = reason;
                        out.push(Packet::PubAck(ack));
                    }
                }
            }
            Packet::Disconnect(_) => return,
            _ => {}
        }
        let mut wire = BytesMut::new();
        for p in out {
            if p.write(&mut wire, None).is_err() {
                return;
            }
        }
        if !wire.is_empty() && wire_tx.send(wire).is_err() {
            return;
        }
    }
}

/// The protocol level of the CONNECT at the start of `buf`, once readable.
fn connect_level(buf: &[u8]) -> Option<u8> {
    // Fixed header: type, remaining length (1-4 bytes); then "MQTT" with its
    // length (6 bytes) and the level.
    let mut at = 1;
    while *buf.get(at)? & 0x80 != 0 {
        at += 1;
    }
    buf.get(at + 7).copied()
}

/// A 3.1.1-only broker: as a destination, CONNACK, PINGRESP, and a PUBACK
/// per PUBLISH (when the script's ack is a success; 3.1.1 has no negative
/// PUBACK); as a source, the session's messages after SUBSCRIBE (and after
/// a reconnect to the persistent session), as in the v5 role.
async fn serve_v311(
    mut socket: tokio::net::tcp::OwnedReadHalf,
    mut buf: BytesMut,
    script: &PeerScript,
    state: &Mutex<PeerState>,
    session: &Mutex<Session>,
    wire_tx: &tokio::sync::mpsc::UnboundedSender<BytesMut>,
) {
    use rumqttc::mqttbytes::v4::{
        ConnAck as ConnAck4, ConnectReturnCode as Code4, Packet as P4, PubAck as PubAck4, SubAck as SubAck4,
        SubscribeReasonCode as Sub4,
    };
    // The session's messages, as 3.1.1 PUBLISHes.
    let resend = || -> Vec<P4> {
        resend_unacked(script, state, session)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    let mut v4 = rumqttc::Publish::new(topic, rumqttc::QoS::AtLeastOnce, p.payload.to_vec());
                    v4.pkid = p.pkid;
                    v4.dup = p.dup;
                    Some(P4::Publish(v4))
                }
                _ => None,
            })
            .collect()
    };
    let mut conn = 0u64;
    loop {
        let packet = loop {
            match P4::read(&mut buf, 1 << 20) {
                Ok(p) => break p,
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(_) => return,
            }
            match tokio::time::timeout(Duration::from_secs(600), socket.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        };
        let mut replies = Vec::new();
        let reply = match packet {
            P4::Connect(connect) => {
                let session_present = {
                    let mut st = lock(state);
                    st.connections += 1;
                    st.connections_v311 += 1;
                    conn = st.connections;
                    !connect.clean_session && st.connections > 1
                };
                replies.push(P4::ConnAck(ConnAck4::new(Code4::Success, session_present)));
                if session_present && lock(session).subscribed {
                    replies.extend(resend());
                }
                None
            }
            P4::Subscribe(sub) => {
                let codes = sub
                    .filters
                    .iter()
                    .map(|_| Sub4::Success(rumqttc::QoS::AtLeastOnce))
                    .collect();
                replies.push(P4::SubAck(SubAck4::new(sub.pkid, codes)));
                lock(session).subscribed = true;
                replies.extend(resend());
                None
            }
            P4::PubAck(ack) => {
                let mut s = lock(session);
                if let Some(i) = s.on_wire.remove(&ack.pkid) {
                    if !s.acked[i] {
                        s.acked[i] = true;
                        lock(state).acked += 1;
                    }
                }
                None
            }
            P4::PingReq => {
                lock(state).pings += 1;
                Some(P4::PingResp)
            }
            P4::Publish(p) => {
                let n = {
                    let mut st = lock(state);
                    st.received.push((conn, p.payload.to_vec()));
                    st.received.len() as u64 - 1
                };
                let success = matches!((script.ack)(n, conn), Some(PubAckReason::Success));
                if success {
                    lock(state).accepted.push(p.payload.to_vec());
                }
                (success && p.qos != rumqttc::QoS::AtMostOnce).then(|| P4::PubAck(PubAck4::new(p.pkid)))
            }
            P4::Disconnect => return,
            _ => None,
        };
        let mut wire = BytesMut::new();
        for reply in reply.into_iter().chain(replies) {
            if reply.write(&mut wire, 1 << 20).is_err() {
                return;
            }
        }
        if !wire.is_empty() && wire_tx.send(wire).is_err() {
            return;
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Every unacknowledged session message, in order, as PUBLISHes (DUP when
/// sent before).
fn resend_unacked(script: &PeerScript, state: &Mutex<PeerState>, session: &Mutex<Session>) -> Vec<Packet> {
    let Some((topic, _, size)) = &script.publish_on_subscribe else {
        return Vec::new();
    };
    let mut s = lock(session);
    let was_on_wire: std::collections::HashSet<usize> = s.on_wire.values().copied().collect();
    s.on_wire.clear();
    let mut out = Vec::new();
    let mut pkid: u16 = 0;
    for i in 0..s.acked.len() {
        if s.acked[i] {
            continue;
        }
        pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
        let topic = match &script.bad_topic_at {
            Some((at, bad)) if *at == i as u64 => bad.clone(),
            _ => topic.clone(),
        };
        let mut p = Publish::new(topic, QoS::AtLeastOnce, super::seq_payload(i as u64, *size), None);
        p.pkid = pkid;
        p.dup = was_on_wire.contains(&i);
        s.on_wire.insert(pkid, i);
        out.push(Packet::Publish(p));
        if s.on_wire.len() >= u16::MAX as usize {
            break; // packet ids are exhausted: the rest after a reconnect
        }
    }
    let mut st = lock(state);
    st.sent += out.len() as u64;
    st.max_unacked = st.max_unacked.max(s.on_wire.len() as u64);
    out
}

/// The ferry config of a test against a peer: link `e1` with one `out`
/// route `edge/1/down/#` -> `down/#`, keepalive 5 s, admin API off, no
/// state topic; `extra`: more `[defaults]` lines.
pub fn one_link_config(
    data: &std::path::Path,
    metrics_port: u16,
    hub_port: u16,
    edge_port: u16,
    extra: &str,
) -> String {
    format!(
        "data_dir = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n[admin]\nlisten = \"off\"\n\
         [hub]\nhost = \"127.0.0.1\"\nport = {hub_port}\nstate_topic = \"off\"\n\
         [defaults]\nkeepalive_secs = 5\nreconnect_max_ms = 1000\n{extra}\n\
         [[links]]\nname = \"e1\"\nhost = \"127.0.0.1\"\nport = {edge_port}\n\
         [[links.routes]]\ndirection = \"out\"\nlocal = \"edge/1/down/#\"\nremote = \"down/#\"\nqos = 1\n",
        data.display()
    )
}

/// Starts `ferry_bin` with [`one_link_config`] (a fresh data directory, a
/// free metrics port); the data directory lives as long as the returned handle.
pub fn start_one_link(
    ferry_bin: &str,
    hub_port: u16,
    edge_port: u16,
    extra: &str,
) -> (tempfile::TempDir, crate::Ferry) {
    let data = crate::Ferry::data_dir_for_test();
    let ferry = crate::Ferry::start(
        ferry_bin,
        &one_link_config(data.path(), crate::free_port(), hub_port, edge_port, extra),
    );
    (data, ferry)
}

fn empty_connack_properties() -> ConnAckProperties {
    ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: None,
        retain_available: None,
        max_packet_size: None,
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}
