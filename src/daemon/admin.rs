//! The admin API: JSON over HTTP on `[admin] listen` (loopback by default).
//!
//! ```text
//! GET  /livez                       200 while the process answers
//! GET  /readyz                      200 when the store is open and links run; 503 + reason otherwise
//! GET  /v1/status                   the process and every link (what `ferry status` shows)
//! GET  /v1/links                    every link
//! GET  /v1/links/{name}             one link
//! POST /v1/links/{name}/pause       stop forwarding; keep receiving and queueing
//! POST /v1/links/{name}/resume      forward (and receive) again
//! POST /v1/links/{name}/restart     stop and start all of the link's connections
//! POST /v1/links/{name}/drain       stop receiving; forward until empty, then pause
//! POST /v1/links/{name}/rate?drain_rate=500/s&drain_bytes_rate=off
//!                                   change the drain pace until the next reload or restart
//! POST /v1/reload                   read the config file again and apply it
//! ```
//! Errors are JSON too: `{"error": "..."}` with 400 (a bad rate), 404
//! (unknown link), 409 (link disabled), 422 (bad config on reload), 500 (a reload that failed
//! for another reason), 503 (not running yet, or shutting down).
//!
//! The replies are the types in [`crate::daemon::control`] and
//! [`crate::link::status`]; the command line ([`crate::cli::admin_client`])
//! reads them back as the same types.
//! There is no authentication: keep it on loopback, or behind a proxy that
//! checks who calls.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::daemon::control::{ActionReply, CommandError, Control, ErrorReply, ReloadError};
use crate::link::supervisor::Command;

/// How long `POST /v1/reload` waits for the run loop (which may be waiting
/// for a full disk to clear) before it gives up.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Binds `addr` (failing at once if it cannot) and serves until `shutdown`.
pub async fn serve(addr: SocketAddr, control: Arc<Control>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("admin API: cannot listen on {addr} (set [admin] listen to a free address, or \"off\")")
    })?;
    let app = router(control);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    tracing::info!(%addr, "serving the admin API (ferry status, ferry link ...)");
    Ok(())
}

fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/livez", get(|| async { Json(json!({ "alive": true })) }))
        .route("/readyz", get(readyz))
        .route("/v1/status", get(status))
        .route("/v1/links", get(links))
        .route("/v1/links/{name}", get(link))
        .route("/v1/links/{name}/rate", post(link_rate))
        .route("/v1/links/{name}/{action}", post(link_action))
        .route("/v1/reload", post(reload))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint; see GET /v1/status".into()) })
        .with_state(control)
}

fn error(code: StatusCode, message: String) -> Response {
    (code, Json(ErrorReply { error: message })).into_response()
}

fn command_error(e: CommandError) -> Response {
    let code = match e {
        CommandError::UnknownLink { .. } => StatusCode::NOT_FOUND,
        CommandError::Disabled(_) => StatusCode::CONFLICT,
        CommandError::NotRunning(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(code, e.to_string())
}

async fn readyz(State(control): State<Arc<Control>>) -> Response {
    match control.not_ready() {
        None => Json(json!({ "ready": true })).into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reason": why })),
        )
            .into_response(),
    }
}

async fn status(State(control): State<Arc<Control>>) -> Response {
    Json(control.view()).into_response()
}

async fn links(State(control): State<Arc<Control>>) -> Response {
    Json(control.view().links).into_response()
}

async fn link(State(control): State<Arc<Control>>, Path(name): Path<String>) -> Response {
    match control.link_view(&name) {
        Ok(view) => Json(view).into_response(),
        Err(e) => command_error(e),
    }
}

async fn link_action(State(control): State<Arc<Control>>, Path((name, action)): Path<(String, String)>) -> Response {
    let command: Command = match action.parse() {
        Ok(command) => command,
        Err(e) => return error(StatusCode::NOT_FOUND, format!("{e}")),
    };
    match control.command(&name, command) {
        Ok(()) => Json(ActionReply {
            link: name,
            requested: command.as_str().to_string(),
        })
        .into_response(),
        Err(e) => command_error(e),
    }
}

async fn link_rate(
    State(control): State<Arc<Control>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    match crate::bridge::pace::parse_change(query.as_deref().unwrap_or("")) {
        Ok(change) => match control.change_rate(&name, change) {
            Ok(reply) => Json(reply).into_response(),
            Err(e) => command_error(e),
        },
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn reload(State(control): State<Arc<Control>>) -> Response {
    match tokio::time::timeout(RELOAD_TIMEOUT, control.reload()).await {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e)) => {
            let code = match e {
                ReloadError::Config(_) => StatusCode::UNPROCESSABLE_ENTITY,
                ReloadError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
                ReloadError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            };
            error(code, e.to_string())
        }
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ferry did not get to the reload in time (is it waiting for the store?); the reload may still happen"
                .into(),
        ),
    }
}
