//! The HTTP server: the listener, routes, the origin check, connection limit and graceful shutdown. It depends on
//! the endpoints it routes to (`ingest`, `fanout::subscriber`) and the state it builds for them (`state`); none
//! of them depends on it.
//!
//! `main` parses the configuration and calls [`run`]; tests call the same function on `127.0.0.1:0`
//! (mini-redis's shape). [`app`] builds the router alone, without a listener, over any [`AppState`]: with a
//! producer driven by hand ([`crate::kafka::producer::Producer::by_hand`]) it needs no broker, so origin
//! refusals, the page's headers, authentication and `/readyz` are tested in-process (`tests.rs`, with
//! `tower::ServiceExt::oneshot`, or [`serve`] on a local port where a real WebSocket upgrade is needed).
//!
//! Routes:
//! - `GET /ws/record`: recorder WebSocket ([`crate::ingest`]);
//! - `GET /ws/feed`: feed WebSocket ([`crate::fanout::subscriber`], fed by [`crate::fanout`]);
//! - `GET /healthz`: 200 while the process serves;
//! - `GET /readyz`: 200 when Kafka is reachable and the topic exists, else 503 with the reason;
//! - `GET /metrics`: Prometheus text ([`crate::metrics`]);
//! - everything else: the built web app from `static_dir`, when configured.
//!
//! Shutdown (SIGTERM, Ctrl+C, or the future passed to [`run`]): stop accepting connections, tell every
//! recorder connection to stop reading, let each deliver the acks of frames Kafka already has (within
//! `shutdown_timeout`), close them with 1001, and return. Upgraded WebSockets are not tracked by hyper, so a
//! `TaskTracker` (in the state) counts them.

pub mod net;
pub mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use futures_util::StreamExt as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Refused;
pub use crate::state::AppState;
use soundline_shared::control::ErrorCode;
use std::time::Duration;
use tracing::Instrument as _;

/// Largest text message accepted (a hello is at most ~6 KiB of metadata).
const MAX_TEXT_BYTES: usize = 64 * 1024;

/// The router, without a listener.
pub fn app(state: AppState) -> Router {
    let static_dir = state.config().static_dir.clone();
    let router = Router::new()
        .route("/ws/record", websocket(Endpoint::Record))
        .route("/ws/feed", websocket(Endpoint::Feed))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    match static_dir {
        // The built web app (trunk's dist/): the page and the WebSockets share one origin and one port.
        Some(dir) => crate::http::web::serve(router, &dir),
        None => router,
    }
}

#[derive(Clone, Copy)]
enum Endpoint {
    Record,
    Feed,
}

/// The route of a WebSocket endpoint: the Origin check, the client's connection share, then the upgrade.
/// A page of another site is refused before anything else, whether or not its request could upgrade.
fn websocket(endpoint: Endpoint) -> MethodRouter<AppState> {
    get(
        move |ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
              State(state): State<AppState>,
              ConnectInfo(peer): ConnectInfo<SocketAddr>,
              headers: HeaderMap| async move {
            if let Some(refusal) = refuse_origin(&state, &headers) {
                return refusal;
            }
            let ws = match ws {
                Ok(ws) => ws,
                Err(rejection) => return rejection.into_response(),
            };
            let limits = &state.config().limits;
            let client = crate::doors::limits::client_address(limits, &headers, peer);
            let Some(client_slot) = state.shared.clients.try_acquire(client, limits.connections_per_client) else {
                state.metrics().refused(Refused::PerClient);
                tracing::info!(%client, "refused a WebSocket: the client holds max_connections_per_client");
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("{client} already holds {} connections; close some first\n", limits.connections_per_client),
                )
                    .into_response();
            };
            let identity = state.shared.auth.check(&headers, crate::since_epoch().as_secs() as i64);
            upgrade(ws, state, Client { peer, slot: client_slot, identity }, endpoint)
        },
    )
}

/// Who is on the other end of a new WebSocket.
struct Client {
    peer: SocketAddr,
    slot: crate::doors::limits::ClientSlot,
    /// The token's identity (`Ok(None)`: authentication is off), or why it was refused.
    identity: Result<Option<String>, crate::doors::auth::AuthError>,
}

/// Browsers say which page opens a WebSocket (`Origin`); a page of another site must not record into Kafka or
/// read the feed through a user's browser. Allowed: no `Origin` (not a browser: tools, tests), the relay's own
/// origin (`Origin`'s host equals `Host`), and the configured `allowed_origins`. Returns the refusal, if any.
fn refuse_origin(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let origin = headers.get(header::ORIGIN).map(|o| o.to_str().unwrap_or("(not text)"))?;
    let allowed = &state.config().allowed_origins;
    let own_host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
    if (!own_host.is_empty() && origin_host == own_host) || allowed.iter().any(|a| a == "*" || a == origin) {
        return None;
    }
    state.metrics().origin_refused_total.inc();
    tracing::info!(origin, "refused a WebSocket from another origin");
    Some(
        (
            StatusCode::FORBIDDEN,
            format!("origin {origin} may not open this WebSocket; add it to SOUNDLINE_ALLOWED_ORIGINS (or allowed_origins)\n"),
        )
            .into_response(),
    )
}

/// Both WebSocket endpoints: the connection limit, message size limits, authentication, and tracking for
/// graceful shutdown.
///
/// A refused token still gets its WebSocket, only to carry `unauthorized` (4014) and close: a browser sees
/// nothing of an HTTP 401 but a failed connection, and would retry forever; a close code tells it to stop.
fn upgrade(ws: WebSocketUpgrade, state: AppState, client: Client, endpoint: Endpoint) -> Response {
    if state.shutdown().is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "the relay is shutting down\n").into_response();
    }
    let Ok(slot) = Arc::clone(&state.shared.connections).try_acquire_owned() else {
        state.metrics().refused(Refused::MaxConnections);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections; retry later\n").into_response();
    };
    let max_message = match endpoint {
        Endpoint::Record => {
            (soundline_shared::frame::HEADER_LEN + state.config().max_frame_samples as usize * 2).max(MAX_TEXT_BYTES)
        }
        Endpoint::Feed => MAX_TEXT_BYTES,
    };
    let tracker = state.shared.tracker.clone();
    let Client { peer, slot: client_slot, identity } = client;
    let who = identity.as_ref().ok().and_then(Option::as_deref).unwrap_or("-").to_owned();
    let span = tracing::info_span!("ws", %peer, %who, endpoint = endpoint.path());
    // Reads of 16 KiB (tungstenite's default is 128 KiB): an idle connection costs a sixth as much, and an audio
    // frame of 200 ms (6.4 KB) still arrives in one read.
    let ws = ws
        .protocols([crate::doors::auth::SUBPROTOCOL])
        .read_buffer_size(16 * 1024)
        .max_message_size(max_message)
        .max_frame_size(max_message);
    ws.on_upgrade(move |socket| {
        tracker.track_future(async move {
            let metrics = Arc::clone(&state.shared.metrics);
            metrics.connections_total.inc();
            metrics.connections_active.inc();
            // The span is the parent of the connection's log lines; entered only for the short refusal
            // (entering it on every poll of a streaming connection costs ~2% of the relay's CPU).
            match (identity, endpoint) {
                (Err(refusal), _) => unauthorized(socket, &state, &refusal).instrument(span).await,
                (Ok(_), Endpoint::Record) => crate::ingest::serve(socket, state, peer.to_string(), span).await,
                (Ok(_), Endpoint::Feed) => {
                    crate::fanout::subscriber::serve(socket, state, peer.to_string(), span).await;
                }
            }
            metrics.connections_active.dec();
            drop((slot, client_slot));
        })
    })
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Self::Record => "/ws/record",
            Self::Feed => "/ws/feed",
        }
    }
}

/// Tells a client its token was refused (`unauthorized`, 4014) and closes.
async fn unauthorized(socket: WebSocket, state: &AppState, refusal: &crate::doors::auth::AuthError) {
    use crate::doors::auth::AuthError;
    state.metrics().refused(match refusal {
        AuthError::Missing => Refused::AuthMissing,
        AuthError::Expired => Refused::AuthExpired,
        AuthError::Unknown | AuthError::InvalidJwt(_) => Refused::AuthInvalid,
    });
    state.metrics().error(ErrorCode::Unauthorized);
    tracing::info!(reason = %refusal, "refused a WebSocket: not authenticated");
    let (mut sink, mut stream) = socket.split();
    crate::ws::goodbye(&mut sink, ErrorCode::Unauthorized, &refusal.to_string(), Duration::from_secs(2)).await;
    crate::ws::linger(&mut stream).await;
}

async fn readyz(State(state): State<AppState>) -> Response {
    let link = state.producer().link().borrow().clone();
    if state.shutdown().is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down\n").into_response()
    } else if let Some(failure) = state.fanout().health().failure() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {failure}\n")).into_response()
    } else if link.up {
        (StatusCode::OK, format!("ready: producing to topic {}\n", state.config().kafka.topic)).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", link.detail)).into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics().render(&{
            let health = state.fanout().health();
            crate::metrics::FeedReaders {
                lag: health.lag(),
                fetches: health.fetches(),
                fetched_bytes: health.fetched_bytes(),
                readers: health.running(),
            }
        }),
    )
        .into_response()
}

/// Serves on `listener` until `shutdown` completes, then drains recorder connections and returns.
///
/// # Errors
///
/// The TLS files could not be loaded.
///
/// # Cancellation
///
/// Dropping the future drops every connection without draining; complete `shutdown` for a graceful stop.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve(listener, AppState::new(config, CancellationToken::new()), shutdown).await
}

/// [`run`] over a state already built (its producer and shutdown token included).
///
/// # Errors
///
/// The TLS files could not be loaded.
///
/// # Cancellation
///
/// As [`run`].
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = state.shutdown().clone();
    let timeout = state.config().shutdown_timeout;
    let tracker = state.shared.tracker.clone();
    let signal = {
        let token = token.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; draining recorder connections");
            token.cancel();
        }
    };
    let tls = match &state.config().tls {
        Some(files) => Some(crate::http::net::tls_acceptor(files).map_err(std::io::Error::other)?),
        None => None,
    };
    let limits = state.config().limits.clone();
    let max_connections = state.config().max_connections;
    let metrics = Arc::clone(&state.shared.metrics);
    let accepting = CancellationToken::new();
    let stop_accepting = accepting.clone();
    let server = crate::http::net::serve(listener, tls, app(state), (&limits, max_connections), metrics, accepting);
    tokio::join!(server, async move {
        signal.await;
        stop_accepting.cancel();
    });
    token.cancel();
    tracker.close();
    // Each connection bounds its own drain by `timeout`; the extra second covers the close handshakes.
    if tokio::time::timeout(timeout + std::time::Duration::from_secs(1), tracker.wait()).await.is_err() {
        tracing::warn!(open = tracker.len(), "shutdown timeout: closing remaining connections");
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests;
