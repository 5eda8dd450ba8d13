//! A mosquitto broker process owned by one test.
//!
//! Each broker gets a free loopback port and a temp directory holding its
//! config, its log and its persistence file. Persistence is on, so a broker
//! stopped with SIGTERM ([`Broker::stop`]) and started again ([`Broker::restart`])
//! keeps its sessions, subscriptions and queued messages, like a real broker
//! that is restarted; [`Broker::kill9`] loses what was not yet saved (it autosaves
//! every couple of seconds; [`Broker::checkpoint`] waits for the next save).
//! The process is killed when the `Broker` is dropped.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use tempfile::TempDir;

use crate::process::{ChildSlot, StillRunning};
use crate::{file_tail, free_port};

/// How long a broker may take to accept TCP connections after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// `max_inflight_messages` of every test broker: how many QoS 1/2 messages a
/// broker sends a client before it waits for acks, and so how many it
/// redelivers to a persistent session that vanished without acking them.
pub const MAX_INFLIGHT: usize = 1000;
/// How long a broker may take to save its database and exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Broker {
    port: u16,
    dir: TempDir,
    /// Without the harness's tuning ([`Broker::start_bare`]).
    bare: bool,
    extra_config: String,
    child: ChildSlot,
}

impl Broker {
    /// Starts a broker with the harness's standard config (see [`Broker::config_text`])
    /// and returns once its port accepts TCP connections. Panics, with the
    /// broker's log, if it does not start within 10 s.
    pub fn start() -> Broker {
        Broker::start_with("")
    }

    /// Like [`Broker::start`], with `extra` config lines appended to the
    /// standard config (for most options, mosquitto takes the last value).
    pub fn start_with(extra: &str) -> Broker {
        Broker::start_in(new_dir(), extra, false)
    }

    /// A broker at mosquitto's shipped defaults but for what the harness
    /// needs ([`Broker::bare_config_text`]), with exactly `extra` added: for
    /// benchmarks of brokers as a new user gets them (in-flight window 20,
    /// Nagle on, no autosave for 30 min).
    pub fn start_bare(extra: &str) -> Broker {
        Broker::start_in(new_dir(), extra, true)
    }

    /// Like [`Broker::start`], with logins checked against a mosquitto
    /// `password_file` (made with `mosquitto_passwd`) holding `users`
    /// (username, password). A client that sends a username must send its
    /// password; with `allow_anonymous`, clients without a username (the
    /// harness's own publishers and collectors) are let in too.
    pub fn start_with_logins(users: &[(&str, &str)], allow_anonymous: bool) -> Broker {
        let dir = new_dir();
        let file = dir.path().join("passwords");
        for (i, (username, password)) in users.iter().enumerate() {
            let mut command = Command::new(mosquitto_passwd_bin());
            command.arg("-b");
            if i == 0 {
                command.arg("-c");
            }
            let status = command
                .arg(&file)
                .arg(username)
                .arg(password)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("Broker: cannot run mosquitto_passwd: {e}"));
            assert!(status.success(), "Broker: mosquitto_passwd failed: {status}");
        }
        let extra = format!("password_file {}\nallow_anonymous {allow_anonymous}\n", file.display());
        Broker::start_in(dir, &extra, false)
    }

    fn start_in(dir: TempDir, extra: &str, bare: bool) -> Broker {
        let mut broker = Broker {
            port: free_port(),
            dir,
            bare,
            extra_config: extra.to_string(),
            child: ChildSlot::default(),
        };
        let data_dir = broker.data_dir();
        fs::create_dir_all(&data_dir).unwrap_or_else(|e| panic!("Broker: cannot create {}: {e}", data_dir.display()));
        // Another process may grab the port between free_port() and mosquitto's
        // bind: then try another port.
        let mut last_error = String::new();
        for _attempt in 0..5 {
            broker.write_config();
            match broker.spawn_and_wait(START_TIMEOUT) {
                Ok(()) => return broker,
                Err(e) if e.port_taken => {
                    last_error = e.message;
                    broker.port = free_port();
                }
                Err(e) => panic!("Broker: mosquitto did not start: {}", e.message),
            }
        }
        panic!("Broker: no free port after 5 attempts: {last_error}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The broker's temp directory (config, logs, `data/` for persistence).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_running()
    }

    /// Kills the broker with SIGKILL and waits for it: like a power cut, it
    /// loses whatever it had not saved yet (call [`Broker::checkpoint`] first
    /// when sessions made just before must survive). The port is free afterwards.
    pub fn kill9(&mut self) {
        self.child.kill9();
    }

    /// Stops the broker with SIGTERM and waits until it has exited; mosquitto
    /// saves its database first, so sessions and queued messages survive a
    /// [`Broker::restart`]. Panics if it has not exited within 30 s.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        match self.child.terminate(STOP_TIMEOUT)? {
            Ok(status) => Some(status),
            Err(StillRunning) => panic!(
                "Broker on port {}: still running 30 s after SIGTERM\n{}",
                self.port,
                self.log_tail()
            ),
        }
    }

    /// Starts the broker again on the same port with the same directory (so
    /// with its persisted state). Stops it cleanly first if it is running.
    /// Retries for up to 10 s while the port is still taken.
    pub fn restart(&mut self) {
        if self.is_running() {
            self.stop();
        }
        self.kill9();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.spawn_and_wait(remaining.max(Duration::from_secs(1))) {
                Ok(()) => return,
                Err(e) if e.port_taken && Instant::now() < deadline => sleep(Duration::from_millis(100)),
                Err(e) => panic!("Broker: restart on port {} failed: {}", self.port, e.message),
            }
        }
    }

    /// Waits until the broker has saved its in-memory state to disk after this
    /// call (autosave runs every ~2 s), so a following [`Broker::kill9`] keeps
    /// the sessions and subscriptions that exist now. Panics after 10 s.
    pub fn checkpoint(&self) {
        let asked_at = SystemTime::now();
        let db = self.data_dir().join("mosquitto.db");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let saved_at = fs::metadata(&db).and_then(|m| m.modified()).ok();
            if saved_at.is_some_and(|t| t > asked_at) {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        panic!(
            "Broker on port {}: no autosave of {} within 10 s\n{}",
            self.port,
            db.display(),
            self.log_tail()
        );
    }

    /// The last lines of the broker's log (and of its stderr, if any).
    pub fn log_tail(&self) -> String {
        let mut tail = file_tail(&self.log_path(), 30);
        let stderr = file_tail(&self.stderr_path(), 10);
        let stderr = stderr.trim();
        if !stderr.is_empty() {
            tail.push_str("\n--- stderr ---\n");
            tail.push_str(stderr);
        }
        tail
    }

    /// The standard config, for `port` and `dir`: [`Broker::bare_config_text`] and
    /// - `max_inflight_messages` [`MAX_INFLIGHT`]: enough in flight to a client for a fast drain.
    /// - `autosave_interval 1`: state is saved every ~2 s, so kill -9 loses little;
    ///   a clean stop (SIGTERM) always saves everything.
    /// - `set_tcp_nodelay true`: no Nagle delay on small packets.
    pub fn config_text(port: u16, dir: &Path) -> String {
        format!(
            "{}autosave_interval 1\nmax_inflight_messages {MAX_INFLIGHT}\nset_tcp_nodelay true\n",
            Broker::bare_config_text(port, dir)
        )
    }

    /// What every harness broker needs, for `port` and `dir`; the rest is
    /// mosquitto's default:
    /// - a loopback listener on `port`, anonymous clients allowed;
    /// - persistence in `dir`/data, so a stopped broker keeps its sessions;
    /// - `max_queued_messages 100000000` (no limit in effect; not 0, which
    ///   mosquitto before 2.0.17 can stall on): the broker must hold everything a
    ///   subscriber (ferry's ingest, a test's Collector) has not yet acked, for
    ///   as long as it is away; mosquitto's default of 1000 would drop the rest.
    /// - `user root`: when tests run as root, mosquitto would otherwise switch to
    ///   the `mosquitto` user, which cannot write to the test's temp directory.
    /// - a log file in `dir`.
    pub fn bare_config_text(port: u16, dir: &Path) -> String {
        format!(
            "# Written by the ferry test harness.\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {data}/\n\
             max_queued_messages 100000000\n\
             user root\n\
             log_dest file {log}\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             log_type information\n",
            data = dir.join("data").display(),
            log = dir.join("mosquitto.log").display(),
        )
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    fn write_config(&self) {
        let mut text = if self.bare {
            Broker::bare_config_text(self.port, self.dir.path())
        } else {
            Broker::config_text(self.port, self.dir.path())
        };
        text.push_str(&self.extra_config);
        text.push('\n');
        let path = self.config_path();
        fs::write(&path, text).unwrap_or_else(|e| panic!("Broker: cannot write {}: {e}", path.display()));
    }

    /// Spawns mosquitto and waits until its port accepts TCP, it exits, or `timeout`.
    fn spawn_and_wait(&mut self, timeout: Duration) -> Result<(), StartError> {
        let stderr_path = self.stderr_path();
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .unwrap_or_else(|e| panic!("Broker: cannot open {}: {e}", stderr_path.display()));
        let stdout = stderr
            .try_clone()
            .unwrap_or_else(|e| panic!("Broker: cannot reopen {}: {e}", stderr_path.display()));
        let log_len_before = fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0);
        let stderr_len_before = fs::metadata(&stderr_path).map(|m| m.len()).unwrap_or(0);
        let mut child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("Broker: cannot run {}: {e}", mosquitto_bin().display()));
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // Only what this run wrote tells why it exited.
                let new_output = format!(
                    "{}{}",
                    read_from(&self.log_path(), log_len_before),
                    read_from(&stderr_path, stderr_len_before)
                );
                return Err(StartError {
                    port_taken: new_output.contains("Address already in use"),
                    message: format!("mosquitto exited with {status} on port {}:\n{new_output}", self.port),
                });
            }
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                self.child.set(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StartError {
                    port_taken: false,
                    message: format!(
                        "port {} not accepting after {timeout:?}\n{}",
                        self.port,
                        self.log_tail()
                    ),
                });
            }
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() && self.pid().is_some() {
            eprintln!(
                "--- mosquitto on port {} (log tail) ---\n{}",
                self.port,
                file_tail(&self.log_path(), 10)
            );
        }
        self.kill9();
    }
}

struct StartError {
    port_taken: bool,
    message: String,
}

/// The mosquitto binary: `$MOSQUITTO_BIN`, else `mosquitto` on the PATH, else
/// Debian's `/usr/sbin/mosquitto` (sbin is not on a normal user's PATH).
pub fn mosquitto_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("MOSQUITTO_BIN") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("mosquitto"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([
            PathBuf::from("/usr/sbin/mosquitto"),
            PathBuf::from("/usr/local/sbin/mosquitto"),
        ])
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("mosquitto not found (PATH, /usr/sbin): run scripts/test, which installs it"))
}

fn new_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("ferry-test-broker-")
        .tempdir()
        .unwrap_or_else(|e| panic!("Broker: cannot create a temp dir: {e}"))
}

/// `mosquitto_passwd`, from the same directory as the mosquitto binary when it
/// is there (Debian: /usr/bin beside /usr/sbin, so also the PATH).
fn mosquitto_passwd_bin() -> PathBuf {
    let beside = mosquitto_bin().with_file_name("mosquitto_passwd");
    [beside, PathBuf::from("/usr/bin/mosquitto_passwd")]
        .into_iter()
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from("mosquitto_passwd"))
}

/// The text a file gained after its first `offset` bytes.
fn read_from(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = (offset as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}
