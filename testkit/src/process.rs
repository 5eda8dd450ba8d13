//! The one child process a [`Broker`](crate::Broker) or [`Ferry`](crate::Ferry)
//! owns: its pid, whether it still runs, kill -9, and SIGTERM with a deadline.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// A slot for a child process (empty before the first start and after it
/// was stopped); shared behind `&self`, so a handle can be asked from
/// several tasks.
#[derive(Default)]
pub(crate) struct ChildSlot(Mutex<Option<Child>>);

/// The process still ran when the deadline after SIGTERM passed (it has been
/// killed since).
pub(crate) struct StillRunning;

impl ChildSlot {
    pub(crate) fn set(&self, child: Child) {
        *self.lock() = Some(child);
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.lock().as_ref().map(Child::id)
    }

    pub(crate) fn is_running(&self) -> bool {
        match self.lock().as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the process with SIGKILL and waits for it.
    pub(crate) fn kill9(&self) {
        if let Some(mut child) = self.lock().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit; kills
    /// it when it is still running then. None when there is no process.
    pub(crate) fn terminate(&self, timeout: Duration) -> Option<Result<ExitStatus, StillRunning>> {
        let mut child = self.lock().take()?;
        send_sigterm(child.id());
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(Ok(status)),
                Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Some(Err(StillRunning));
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        // A panic while the lock was held leaves the Option intact: use it anyway.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Sends SIGTERM through the shell's `kill` builtin, as the harness always
/// has (its few milliseconds of delay are part of the timing the tests were
/// written against).
fn send_sigterm(pid: u32) {
    let _ = Command::new("sh")
        .args(["-c", "kill -s TERM \"$1\"", "sh", &pid.to_string()])
        .stdin(Stdio::null())
        .status();
}
