//! The ferry binary, run as a real process by a test.
//!
//! [`Ferry::start`] takes the binary to run (the caller's
//! `env!("CARGO_BIN_EXE_ferry")`), writes the test's config to a temp
//! directory and runs `ferry run --config <file>` with `RUST_LOG=info`, stdout and stderr going to
//! a log file there (kept across restarts, one marker line per start). The test
//! puts `data_dir` (see [`Ferry::data_dir_for_test`]) and `[metrics] listen`
//! (with a [`free_port`](crate::free_port)) into the config; the harness reads
//! the metrics address back from it to scrape `/metrics`.
//! Dropping a `Ferry` kills it; when the test is panicking, the tail of its log
//! is printed first, so a failure shows what ferry was doing.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::file_tail;
use crate::metrics::Metrics;
use crate::process::{ChildSlot, StillRunning};

/// How long ferry may take to serve its metrics port after being spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long ferry may take to exit after SIGTERM (commit, close cleanly).
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `<ferry_bin> <args>` to completion (for CLI tests such as `ferry check`).
pub fn run_ferry(ferry_bin: impl AsRef<Path>, args: &[&str]) -> Output {
    let bin = ferry_bin.as_ref();
    Command::new(bin)
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

/// Like [`run_ferry`] for a command that must end by itself (`ferry run`
/// with a config it refuses): a ferry still running after `timeout` is
/// killed, and its output returned with the signal as its status.
pub fn run_ferry_bounded(ferry_bin: impl AsRef<Path>, args: &[&str], timeout: Duration) -> Output {
    let bin = ferry_bin.as_ref();
    let mut child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("cannot wait for {}: {e}", bin.display()))
}

/// Writes the bad config `text` to `<dir>/<what>.toml` and asserts that
/// `ferry check` and `ferry run` both refuse it: exit status 1, stderr naming
/// `<file>:<line>:` and containing `needle`; and that neither created the
/// config's `data_dir`. `what` names the case in every failure message.
pub fn assert_config_refused(
    ferry_bin: impl AsRef<Path>,
    dir: &Path,
    data_dir: &Path,
    what: &str,
    text: &str,
    line: usize,
    needle: &str,
) {
    let path = dir.join(format!("{}.toml", what.replace(' ', "-")));
    fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    for cmd in ["check", "run"] {
        let out = run_ferry(&ferry_bin, &[cmd, "--config", &path.display().to_string()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what} ({cmd}): exit status; stderr: {stderr}"
        );
        let want = format!("{}:{line}:", path.display());
        assert!(
            stderr.contains(&want),
            "{what} ({cmd}): expected {want} in: {stderr}\n--- config ---\n{text}"
        );
        assert!(
            stderr.contains(needle),
            "{what} ({cmd}): expected {needle:?} in: {stderr}"
        );
    }
    assert!(
        !data_dir.exists(),
        "{what}: ferry created its data_dir although the config is bad"
    );
}

pub struct Ferry {
    bin: PathBuf,
    dir: TempDir,
    env: Vec<(String, String)>,
    metrics_addr: Option<SocketAddr>,
    child: ChildSlot,
    starts: u32,
}

impl Ferry {
    /// A fresh temp directory to use as `data_dir`. Keep it alive as long as
    /// the `Ferry` (and across its restarts): dropping it deletes the queues.
    pub fn data_dir_for_test() -> TempDir {
        tempfile::Builder::new()
            .prefix("ferry-test-data-")
            .tempdir()
            .unwrap_or_else(|e| panic!("Ferry: cannot create a temp dir: {e}"))
    }

    /// Writes `config_toml` to a temp file, runs `<ferry_bin> run --config <file>`
    /// and, when the config has `[metrics] listen`, waits until that port
    /// accepts connections. Panics with ferry's log if it exits or is not
    /// listening within 30 s.
    pub fn start(ferry_bin: impl AsRef<Path>, config_toml: &str) -> Ferry {
        Ferry::start_with_env(ferry_bin, config_toml, &[])
    }

    /// Like [`Ferry::start`], with extra environment variables for ferry
    /// (they override the harness's `RUST_LOG=info`).
    pub fn start_with_env(ferry_bin: impl AsRef<Path>, config_toml: &str, env: &[(&str, &str)]) -> Ferry {
        let dir = tempfile::Builder::new()
            .prefix("ferry-test-run-")
            .tempdir()
            .unwrap_or_else(|e| panic!("Ferry: cannot create a temp dir: {e}"));
        let mut ferry = Ferry {
            bin: ferry_bin.as_ref().to_path_buf(),
            dir,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            metrics_addr: None,
            child: ChildSlot::default(),
            starts: 0,
        };
        ferry.write_config(config_toml);
        ferry.spawn_and_wait();
        ferry
    }

    /// The config file ferry runs with (e.g. for `run_ferry(FERRY, &["check", "--config", ...])`).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("ferry.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("ferry.log")
    }

    /// The `[metrics] listen` address from the config; panics when there is none.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
            .unwrap_or_else(|| panic!("Ferry: the config has no [metrics] listen address"))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_running()
    }

    /// Kills ferry with SIGKILL (no chance to commit or close) and waits for it.
    pub fn kill9(&mut self) {
        self.child.kill9();
    }

    /// Sends SIGTERM and waits up to 20 s for ferry to exit; returns its exit
    /// status (a clean shutdown is `status.success()`). Panics, with the log,
    /// if ferry is still running after 20 s or was not running.
    pub fn terminate(&mut self) -> ExitStatus {
        match self.child.terminate(TERMINATE_TIMEOUT) {
            Some(Ok(status)) => status,
            Some(Err(StillRunning)) => panic!("Ferry: still running 20 s after SIGTERM\n{}", self.log_tail(60)),
            None => panic!("Ferry::terminate: ferry is not running\n{}", self.log_tail(40)),
        }
    }

    /// Starts ferry again with the same config and data_dir. If it is still
    /// running, stops it first with SIGTERM (see [`Ferry::terminate`]).
    pub fn restart(&mut self) {
        if self.is_running() {
            self.terminate();
        }
        self.spawn_and_wait();
    }

    /// Like [`Ferry::restart`], with a new config.
    pub fn restart_with_config(&mut self, config_toml: &str) {
        if self.is_running() {
            self.terminate();
        }
        self.write_config(config_toml);
        self.spawn_and_wait();
    }

    /// Everything ferry wrote so far, across all its runs (terminal colour
    /// codes removed).
    pub fn log(&self) -> String {
        let bytes = fs::read(self.log_path()).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(&bytes))
    }

    /// The last `lines` lines of ferry's log.
    pub fn log_tail(&self, lines: usize) -> String {
        strip_ansi(&file_tail(&self.log_path(), lines))
    }

    /// Waits until the log contains `needle`; false after `timeout`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        crate::wait_until(timeout, Duration::from_millis(50), || self.log().contains(needle)).await
    }

    /// Scrapes `/metrics`; panics (with ferry's log) when that fails.
    pub fn scrape(&self) -> Metrics {
        self.try_scrape()
            .unwrap_or_else(|e| panic!("Ferry: scrape failed: {e}\n{}", self.log_tail(40)))
    }

    /// Scrapes `/metrics` over a plain TCP connection and parses the text.
    pub fn try_scrape(&self) -> Result<Metrics, String> {
        let addr = self.metrics_addr.ok_or("the config has no [metrics] listen address")?;
        let body = http_get(addr, "/metrics")?;
        Metrics::parse(&body)
    }

    /// Asserts the counter invariant of link `link`'s `direction`, as
    /// exported: received = forwarded + dropped + queued, with something
    /// received; `drained`: and nothing left queued. Counters are exported
    /// once a second, so it waits up to 10 s for a sample that holds.
    pub async fn assert_invariant(&self, link: &str, direction: &str, drained: bool) {
        let labels = [("link", link), ("direction", direction)];
        let mut last = String::new();
        let ok = crate::wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            let m = self.scrape();
            let r = m.get_or_zero("ferry_messages_received_total", &labels);
            let f = m.get_or_zero("ferry_messages_forwarded_total", &labels);
            let d = m.get_or_zero("ferry_messages_dropped_total", &labels);
            let q = m.get_or_zero("ferry_queue_messages", &labels);
            last = format!("received {r} forwarded {f} dropped {d} queued {q}");
            r > 0.0 && r == f + d + q && (!drained || q == 0.0)
        })
        .await;
        let broken = if drained {
            "invariant broken or queue not empty"
        } else {
            "invariant broken"
        };
        assert!(ok, "{link}/{direction}: {broken}: {last}");
    }

    /// Scrapes every 100 ms until the metric (summed over the samples with the
    /// given labels, see [`Metrics::get`]) satisfies `pred`; returns its value.
    /// A metric not exported yet counts as not satisfying. After `timeout`,
    /// or as soon as ferry is found not running, returns an error with the
    /// last value seen, the matching lines and the tail of ferry's log.
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        pred: impl Fn(f64) -> bool,
        timeout: Duration,
    ) -> Result<f64, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let last_seen = match self.try_scrape() {
                Ok(metrics) => match metrics.get(name, labels) {
                    Some(value) if pred(value) => return Ok(value),
                    Some(value) => {
                        format!("last value {value}; lines:\n{}", metrics.lines_for(name))
                    }
                    None => format!("metric not exported; lines:\n{}", metrics.lines_for(name)),
                },
                Err(e) => format!("scrape failed: {e}"),
            };
            let running = self.is_running();
            if !running || Instant::now() >= deadline {
                let why = if running {
                    format!("timed out after {timeout:?}")
                } else {
                    "ferry is not running".into()
                };
                return Err(format!(
                    "wait_metric {name}{labels:?}: {why}; {last_seen}\n--- ferry log tail ---\n{}",
                    self.log_tail(40)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `ferry_link_up{link}` is 1.
    pub async fn wait_link_up(&self, link: &str, timeout: Duration) -> Result<f64, String> {
        self.wait_metric("ferry_link_up", &[("link", link)], |v| v == 1.0, timeout)
            .await
    }

    /// Replaces the config file (the running ferry reads it on reload).
    pub fn write_config(&mut self, config_toml: &str) {
        let path = self.config_path();
        fs::write(&path, config_toml).unwrap_or_else(|e| panic!("Ferry: cannot write {}: {e}", path.display()));
        self.metrics_addr = metrics_listen_addr(config_toml);
    }

    fn spawn_and_wait(&mut self) {
        self.starts += 1;
        let log_path = self.log_path();
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("Ferry: cannot open {}: {e}", log_path.display()));
        let _ = writeln!(log, "=== test harness: ferry start #{} ===", self.starts);
        let stdout = log
            .try_clone()
            .unwrap_or_else(|e| panic!("Ferry: cannot reopen {}: {e}", log_path.display()));
        let mut command = Command::new(&self.bin);
        command
            .arg("run")
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("Ferry: cannot run {}: {e}", self.bin.display()));
        self.child.set(child);
        let Some(addr) = self.metrics_addr else {
            return;
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if !self.is_running() {
                panic!("Ferry: exited during start-up\n{}", self.log_tail(60));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "Ferry: metrics port {addr} not accepting after {START_TIMEOUT:?}\n{}",
                    self.log_tail(60)
                );
            }
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- ferry log tail ({}) ---\n{}",
                self.log_path().display(),
                self.log_tail(60)
            );
        }
        self.kill9();
    }
}

/// Scrapes the Prometheus endpoint at `addr` (for use from spawned tasks).
pub fn scrape_addr(addr: SocketAddr) -> Result<Metrics, String> {
    http_get(addr, "/metrics").and_then(|text| Metrics::parse(&text))
}

/// `[metrics] listen` from a config, if present and an address.
fn metrics_listen_addr(config_toml: &str) -> Option<SocketAddr> {
    let table: toml::Table = config_toml.parse().ok()?;
    table.get("metrics")?.get("listen")?.as_str()?.parse().ok()
}

/// A minimal HTTP/1.0 GET: enough for a Prometheus endpoint on loopback.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect {addr}: {e}"))?;
    let io_timeout = Some(Duration::from_secs(5));
    stream
        .set_read_timeout(io_timeout)
        .map_err(|e| format!("set timeout: {e}"))?;
    stream
        .set_write_timeout(io_timeout)
        .map_err(|e| format!("set timeout: {e}"))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send request to {addr}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("read response from {addr}: {e}"))?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {} bytes", response.len()))?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let body = &response[split + 4..];
    let status_line = head.lines().next().unwrap_or("");
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(format!("GET {path}: {status_line}"));
    }
    let header = |name: &str| {
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_ascii_lowercase())
        })
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        decode_chunked(body)?
    } else if let Some(length) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.get(..length)
            .ok_or_else(|| format!("body shorter than content-length {length}"))?
            .to_vec()
    } else {
        body.to_vec()
    };
    String::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line not terminated")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|e| format!("bad chunk size {size_text:?}: {e}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = data.get(..size).ok_or("chunk shorter than its size")?;
        body.extend_from_slice(chunk);
        data = data.get(size + 2..).ok_or("chunk not terminated")?;
    }
}

/// Removes terminal colour sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for next in chars.by_ref() {
                if next.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
