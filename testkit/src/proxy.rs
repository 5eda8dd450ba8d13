//! A TCP proxy that can go silent, for fault tests.
//!
//! Put it between ferry and a broker; `set_silent(true)` then behaves like a
//! peer that lost power or a network partition: the sockets stay open, no FIN,
//! no RST, but no byte passes in either direction (they wait, unread, until
//! `set_silent(false)`, as TCP would retransmit them once the path heals).
//! Connections accepted while silent are held too: the TCP handshake with the
//! proxy completes, but nothing reaches the target until the proxy resumes.
//! `kill_connections()` closes every connection (FIN to both sides).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

use crate::free_port;

pub struct SilentProxy {
    addr: SocketAddr,
    target: SocketAddr,
    silent: watch::Sender<bool>,
    connections: Connections,
    accepted: Arc<AtomicU64>,
    accept_task: JoinHandle<()>,
}

impl SilentProxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> SilentProxy {
        let (listener, addr) = listen_on_free_port("SilentProxy").await;
        let (silent, silent_rx) = watch::channel(false);
        let connections = Connections::default();
        let accepted = Arc::new(AtomicU64::new(0));
        let accept_task = tokio::spawn(accept_loop(
            listener,
            target,
            silent_rx,
            connections.clone(),
            accepted.clone(),
        ));
        SilentProxy {
            addr,
            target,
            silent,
            connections,
            accepted,
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

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// `true`: stop passing bytes (sockets stay open); `false`: pass them again,
    /// including those held meanwhile.
    pub fn set_silent(&self, silent: bool) {
        self.silent.send_replace(silent);
    }

    pub fn is_silent(&self) -> bool {
        *self.silent.borrow()
    }

    /// Closes every current connection (both sides see the socket close).
    pub fn kill_connections(&self) {
        self.connections.kill_all();
    }

    /// Connections accepted since the start.
    pub fn accepted_connections(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections currently open (or held).
    pub fn open_connections(&self) -> usize {
        self.connections.open()
    }
}

impl Drop for SilentProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.kill_connections();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    silent: watch::Receiver<bool>,
    connections: Connections,
    accepted: Arc<AtomicU64>,
) {
    accept_each(listener, connections, |client| {
        accepted.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(forward(client, target, silent.clone()))
    })
    .await
}

/// Listens on a free loopback port (`who` names the proxy in the panic if
/// none can be had): the start of [`SilentProxy`] and [`crate::DelayProxy`].
pub(crate) async fn listen_on_free_port(who: &str) -> (TcpListener, SocketAddr) {
    let mut last_error = String::new();
    for _attempt in 0..5 {
        let port = free_port();
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => return (listener, SocketAddr::from(([127, 0, 0, 1], port))),
            Err(e) => last_error = e.to_string(),
        }
    }
    panic!("{who}: cannot listen on a free port: {last_error}");
}

/// The connections a proxy has accepted, so that it can close them all.
#[derive(Clone, Default)]
pub(crate) struct Connections(Arc<Mutex<Vec<AbortHandle>>>);

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<AbortHandle>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, task: AbortHandle) {
        let mut connections = self.lock();
        connections.retain(|c| !c.is_finished());
        connections.push(task);
    }

    /// Closes every current connection (both sides see the socket close).
    pub(crate) fn kill_all(&self) {
        for connection in self.lock().drain(..) {
            connection.abort();
        }
    }

    /// Connections currently open (or held).
    pub(crate) fn open(&self) -> usize {
        let mut connections = self.lock();
        connections.retain(|c| !c.is_finished());
        connections.len()
    }
}

/// Accepts connections for ever, starting `serve` for each and keeping its
/// task in `connections`: the accept loop of [`SilentProxy`] and
/// [`crate::DelayProxy`].
pub(crate) async fn accept_each(
    listener: TcpListener,
    connections: Connections,
    mut serve: impl FnMut(TcpStream) -> JoinHandle<()>,
) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                // e.g. out of file descriptors: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        connections.push(serve(client).abort_handle());
    }
}

/// Connects to the target (once not silent) and copies bytes both ways.
async fn forward(client: TcpStream, target: SocketAddr, mut silent: watch::Receiver<bool>) {
    if !wait_until_audible(&mut silent).await {
        return;
    }
    let Ok(upstream) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    tokio::join!(
        pump(client_read, upstream_write, silent.clone()),
        pump(upstream_read, client_write, silent),
    );
}

/// Copies one direction, holding the bytes while the proxy is silent.
/// On end of stream, passes the half-close (FIN) on.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut silent: watch::Receiver<bool>) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if !wait_until_audible(&mut silent).await {
            return;
        }
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        // Silence may have begun while we waited for these bytes: hold them.
        if !wait_until_audible(&mut silent).await {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

/// Waits while the proxy is silent; false when the proxy is gone.
async fn wait_until_audible(silent: &mut watch::Receiver<bool>) -> bool {
    silent.wait_for(|is_silent| !*is_silent).await.is_ok()
}
