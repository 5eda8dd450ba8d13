//! A small MQTT v5 load tool for demos and measurements (loopback only).
//!
//! ```text
//! loadgen publish HOST:PORT TOPIC COUNT [PAYLOAD_BYTES] [START]
//!     publishes COUNT QoS 1 messages (payload: the sequence number from
//!     START as 20 decimal digits, then filler: one line of text per
//!     message for `mosquitto_sub`) with 100 in flight, waits for every
//!     PUBACK, prints the rate
//! loadgen count HOST:PORT FILTER COUNT [CLIENT_ID]
//!     subscribes (QoS 1, persistent session) and returns when COUNT distinct
//!     sequence numbers arrived; prints the rate from the first message
//! ```
//! `mosquitto_pub -l` is no substitute: it disconnects at the end of its
//! input before everything is sent.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

/// Digits of the sequence number at the start of every payload.
const SEQ_DIGITS: usize = 20;

fn usage() -> ! {
    eprintln!("usage: loadgen publish HOST:PORT TOPIC COUNT [PAYLOAD_BYTES] [START]\n       loadgen count HOST:PORT FILTER COUNT [CLIENT_ID]");
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: Option<T>) -> T {
    match args.get(i) {
        Some(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("loadgen: cannot parse argument {i}: {v:?}");
            usage()
        }),
        None => default.unwrap_or_else(|| usage()),
    }
}

fn options(addr: &str, id: &str) -> MqttOptions {
    let Some((host, port)) = addr.rsplit_once(':') else {
        usage()
    };
    let port: u16 = port.parse().unwrap_or_else(|_| usage());
    let mut o = MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(Some(300 << 20));
    o
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("publish") => {
            let (addr, topic) = (arg::<String>(&args, 2, None), arg::<String>(&args, 3, None));
            let count: u64 = arg(&args, 4, None);
            let size: usize = arg(&args, 5, Some(128));
            let start: u64 = arg(&args, 6, Some(0));
            publish(&addr, &topic, count, size.max(SEQ_DIGITS), start).await
        }
        Some("count") => {
            let (addr, filter) = (arg::<String>(&args, 2, None), arg::<String>(&args, 3, None));
            let count: u64 = arg(&args, 4, None);
            let id: String = arg(&args, 5, Some(format!("loadgen-count-{}", std::process::id())));
            count_messages(&addr, &filter, count, &id).await
        }
        _ => usage(),
    }
}

async fn publish(addr: &str, topic: &str, count: u64, size: usize, start: u64) {
    let (client, mut eventloop) = AsyncClient::new(options(addr, &format!("loadgen-pub-{}", std::process::id())), 1000);
    let began = Instant::now();
    let mut sent = 0u64;
    let mut acked = 0u64;
    let mut inflight: VecDeque<u64> = VecDeque::new();
    while acked < count {
        while sent < count && inflight.len() < 100 {
            let mut payload = vec![b'x'; size];
            payload[..SEQ_DIGITS].copy_from_slice(format!("{:020}", start + sent).as_bytes());
            if client.try_publish(topic, QoS::AtLeastOnce, false, payload).is_err() {
                break;
            }
            inflight.push_back(start + sent);
            sent += 1;
        }
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                inflight.pop_front();
                acked += 1;
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("loadgen: connection to {addr} failed: {e}");
                std::process::exit(1);
            }
        }
    }
    let secs = began.elapsed().as_secs_f64();
    println!(
        "published {count} x {size} B to {topic} in {secs:.2} s: {:.0} msg/s",
        count as f64 / secs
    );
}

async fn count_messages(addr: &str, filter: &str, count: u64, id: &str) {
    let mut o = options(addr, id);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(3600));
    let (client, mut eventloop) = AsyncClient::new(o, 1000);
    let mut seen = HashSet::new();
    let mut first: Option<Instant> = None;
    let mut total = 0u64;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client.subscribe_many([Filter::new(filter, QoS::AtLeastOnce)]).await;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                first.get_or_insert_with(Instant::now);
                total += 1;
                if let Some(seq) = p
                    .payload
                    .get(..SEQ_DIGITS)
                    .and_then(|d| std::str::from_utf8(d).ok()?.parse::<u64>().ok())
                {
                    seen.insert(seq);
                }
                if seen.len() as u64 >= count {
                    let secs = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(0.0).max(1e-9);
                    println!("received {count} distinct ({total} with duplicates) in {secs:.2} s from the first: {:.0} msg/s", count as f64 / secs);
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("loadgen: {addr}: {e}; reconnecting");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
