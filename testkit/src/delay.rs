//! A TCP proxy that delays every byte by a fixed one-way time: a WAN link on
//! loopback, for benchmarks (and tests) of links with a long round trip.
//!
//! Each direction of each connection is a reader and a writer: the reader
//! stamps every chunk it reads with `now + one_way` and hands it on in order;
//! the writer waits until that moment and writes it. So the round trip through
//! the proxy is `2 × one_way` plus loopback time, order is kept, and
//! bandwidth is not limited (what a link's window allows in one round trip is
//! what matters). At most [`CHUNKS_IN_FLIGHT`] chunks (of up to 64 KiB) wait
//! per direction; past that the reader stops reading, and TCP's own flow
//! control holds the sender, as a full line would.
//! A connection the target refuses is closed at once; when either side closes,
//! the proxy passes the close on after the bytes already in flight.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::proxy::{accept_each, listen_on_free_port, Connections};

/// Chunks waiting in one direction before the reader stops reading.
pub const CHUNKS_IN_FLIGHT: usize = 4096;

pub struct DelayProxy {
    addr: SocketAddr,
    one_way: Duration,
    connections: Connections,
    accept_task: JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on a free loopback port and forwards every connection to
    /// `target`, each direction delayed by `one_way` (RTT = 2 × `one_way`).
    /// Must be called inside a tokio runtime, which then runs the proxy.
    pub async fn start(target: SocketAddr, one_way: Duration) -> DelayProxy {
        let (listener, addr) = listen_on_free_port("DelayProxy").await;
        let connections = Connections::default();
        let accept_task = tokio::spawn(accept_loop(listener, target, one_way, connections.clone()));
        DelayProxy {
            addr,
            one_way,
            connections,
            accept_task,
        }
    }

    /// Where clients connect: `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The round trip the proxy adds.
    pub fn rtt(&self) -> Duration {
        2 * self.one_way
    }

    /// Closes every current connection at once (both sides see it close).
    pub fn kill_connections(&self) {
        self.connections.kill_all();
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.kill_connections();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, one_way: Duration, connections: Connections) {
    accept_each(listener, connections, |client| {
        tokio::spawn(forward(client, target, one_way))
    })
    .await
}

/// Connects to the target and passes bytes both ways, each delayed.
async fn forward(client: TcpStream, target: SocketAddr, one_way: Duration) {
    let Ok(upstream) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    tokio::join!(
        delayed_copy(client_read, upstream_write, one_way),
        delayed_copy(upstream_read, client_write, one_way),
    );
}

/// One direction: read, stamp, hand on; the writer writes each chunk at its
/// stamp. On end of stream, the half-close (FIN) follows the last chunk.
async fn delayed_copy(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, one_way: Duration) {
    let (chunks, mut due) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let reader = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            if chunks
                .send((Instant::now() + one_way, buffer[..read].to_vec()))
                .await
                .is_err()
            {
                break;
            }
        }
        // Dropping `chunks` tells the writer the stream ended.
    };
    let writer = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo through the proxy takes at least the round trip and comes back
    /// whole and in order.
    #[tokio::test]
    async fn echo_takes_the_round_trip_and_keeps_order() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        let proxy = DelayProxy::start(echo_addr, Duration::from_millis(30)).await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let started = std::time::Instant::now();
        s.write_all(&sent).await.unwrap();
        let mut got = vec![0u8; sent.len()];
        s.read_exact(&mut got).await.unwrap();
        assert!(
            started.elapsed() >= proxy.rtt(),
            "echo in {:?} < {:?}",
            started.elapsed(),
            proxy.rtt()
        );
        assert!(got == sent, "bytes changed or reordered");
    }
}
