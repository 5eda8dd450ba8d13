//! Signals: one shutdown signal that every task listens to, and SIGHUP as
//! a reload request.
//!
//! SIGTERM or SIGINT cancels the root token; every link supervisor holds a
//! child of it. Tasks finish what they were doing (an ingest batch is
//! committed and acknowledged, connections are closed) and return.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down: committing and closing connections");
        token.cancel();
    });
    Ok(())
}

/// Sends a reload request on every SIGHUP (the outcome is logged).
pub fn reload_on_sighup(
    requests: tokio::sync::mpsc::Sender<crate::daemon::control::ReloadRequest>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(signal = "SIGHUP", "reloading the config");
            if requests
                .send(crate::daemon::control::ReloadRequest { reply: None })
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Ok(())
}
