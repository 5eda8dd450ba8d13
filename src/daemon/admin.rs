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
//! Errors are JSON too: `{"error": "..."}` with 400 (a bad rate), 401 (no or wrong bearer
//! token), 403 (a cross-origin browser request), 404 (unknown link), 409
//! (link disabled), 422 (bad config on reload), 500 (a reload that failed
//! for another reason), 503 (not running yet, or shutting down).
//!
//! The replies are the types in [`crate::daemon::control`] and
//! [`crate::link::status`]; the command line ([`crate::cli::admin_client`])
//! reads them back as the same types.
//!
//! Who may call ([`guard`], docs/security.md): with `[admin] token_file`
//! (required by the config on any address but loopback), every request but
//! the probes `/livez` and `/readyz` needs `Authorization: Bearer <token>`;
//! probes stay open because a Kubernetes or systemd probe cannot easily
//! send one, and they tell nothing but "up" and "ready". A request with an
//! `Origin` header other than the API's own (a web page in a browser on
//! this host) is refused, with or without a token. A client gets
//! [`HEADER_READ_TIMEOUT`] to send its request headers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
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

/// How long a client may take to send a request's headers before its
/// connection is closed (a client that connects and sends nothing holds no
/// task for long).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` (failing at once if it cannot) and serves until `shutdown`.
pub async fn serve(addr: SocketAddr, control: Arc<Control>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("admin API: cannot listen on {addr} (set [admin] listen to a free address, or \"off\")")
    })?;
    let token = control.admin_token().is_some();
    let guard = Guard {
        control: control.clone(),
        own_origins: Arc::new(own_origins(addr)),
    };
    let app = router(control).layer(axum::middleware::from_fn_with_state(guard, self::guard));
    tokio::spawn(accept_loop(listener, app, shutdown));
    tracing::info!(%addr, token, "serving the admin API (ferry status, ferry link ...)");
    Ok(())
}

/// Serves each connection with hyper's HTTP/1 server directly: `axum::serve`
/// sets no timer, so it cannot time out a client's request headers.
async fn accept_loop(listener: tokio::net::TcpListener, app: Router, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "admin API: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "admin API: connection ended with an error");
            }
        });
    }
}

/// What [`guard`] checks requests against.
#[derive(Clone)]
struct Guard {
    control: Arc<Control>,
    /// The `Origin` values of pages served by this API itself.
    own_origins: Arc<Vec<String>>,
}

/// The origins a browser sends for this API's own address: the listen
/// address, and for a loopback or wildcard one its loopback names too.
fn own_origins(addr: SocketAddr) -> Vec<String> {
    let mut origins = vec![format!("http://{addr}")];
    if addr.ip().is_loopback() || addr.ip().is_unspecified() {
        let port = addr.port();
        origins.extend([
            format!("http://127.0.0.1:{port}"),
            format!("http://localhost:{port}"),
            format!("http://[::1]:{port}"),
        ]);
    }
    origins
}

/// Refuses a cross-origin browser request (403), and without the right
/// bearer token any request but the probes (401).
async fn guard(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let own = guard
            .own_origins
            .iter()
            .any(|own| own.as_bytes().eq_ignore_ascii_case(origin.as_bytes()));
        if !own {
            return error(
                StatusCode::FORBIDDEN,
                "cross-origin requests are refused: the admin API does not answer web pages from other \
                 origins (a command-line client sends no Origin header)"
                    .into(),
            );
        }
    }
    let probe = matches!(request.uri().path(), "/livez" | "/readyz");
    if let (false, Some(token)) = (probe, guard.control.admin_token()) {
        let refusal = match bearer(request.headers()) {
            None => Some(
                "this admin API needs a bearer token: send \"Authorization: Bearer <token>\" with the \
                          content of [admin] token_file (ferry status --config FILE does)",
            ),
            Some(given) if !token.matches(given) => Some("the bearer token is wrong"),
            Some(_) => None,
        };
        if let Some(why) = refusal {
            let mut response = error(StatusCode::UNAUTHORIZED, why.into());
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let scheme = value.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"Bearer ")
        .then(|| value.get(7..))
        .flatten()
        .map(|token| token.trim_ascii())
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
