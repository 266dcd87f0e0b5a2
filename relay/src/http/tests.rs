//! The router in-process, with no broker: [`app`] over a producer driven by hand ([`Producer::by_hand`]).
//!
//! HTTP answers go through `tower::ServiceExt::oneshot`. What needs a real WebSocket upgrade (a page let through
//! by the origin check, authentication's close code, an ack carrying the offset Kafka gave) goes through
//! [`serve`] on a local port. Everything that touches Kafka itself is tested against the real broker in `tests/`.

use super::*;
use crate::config::RawConfig;
use crate::kafka::producer::{ByHand, Delivery, Producer};
use crate::metrics::Metrics;
use axum::body::Body;
use axum::http::Request;
use futures_util::SinkExt as _;
use soundline_shared::control::{ClientMessage, Hello, ServerMessage};
use soundline_shared::recording::{DeviceInfo, LocationInfo, Recording};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, client::IntoClientRequest as _};
use tower::ServiceExt as _;

/// The relay's topic in these tests; no broker holds it.
const TOPIC: &str = "in-process";

fn config(pairs: &[(&str, &str)]) -> Config {
    let base = [("SOUNDLINE_KAFKA_BROKERS", "127.0.0.1:9"), ("SOUNDLINE_TOPIC", TOPIC)];
    let mut raw = RawConfig::default();
    raw.apply_env(|k| pairs.iter().chain(base.iter()).find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned()));
    raw.resolve().unwrap_or_else(|e| panic!("config: {e}"))
}

fn state(pairs: &[(&str, &str)]) -> (AppState, ByHand) {
    let config = config(pairs);
    let (producer, hand) = Producer::by_hand(config.memory_budget_bytes, Arc::new(Metrics::default()));
    (AppState::with_producer(config, producer, CancellationToken::new()), hand)
}

/// One request through the router, as if from 203.0.113.7 to the host `relay.test`.
async fn get(app: &Router, path: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
    let mut request = axum::http::Request::get(path).header(header::HOST, "relay.test");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let peer: SocketAddr = "203.0.113.7:40000".parse().expect("address");
    let request: Request<Body> = request.extension(ConnectInfo(peer)).body(Body::empty()).expect("request");
    let response = app.clone().oneshot(request).await.expect("the router is infallible");
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
    (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
}

/// The value of `name` (with its labels) in `/metrics`.
async fn metric(app: &Router, name: &str) -> Option<i64> {
    let (_, _, text) = get(app, "/metrics", &[]).await;
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The headers a browser's WebSocket request carries (without the connection hyper would upgrade).
const UPGRADE: [(&str, &str); 4] = [
    ("connection", "upgrade"),
    ("upgrade", "websocket"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

#[tokio::test]
async fn readyz_says_why_the_relay_is_not_ready_until_the_link_is_up() {
    let (state, hand) = state(&[]);
    let app = app(state.clone());
    let (status, _, body) = get(&app, "/readyz", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "not ready: connecting to Kafka\n"));
    hand.set_link(false, "partition 3: broker 1 is unreachable");
    let (status, _, body) = get(&app, "/readyz", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: partition 3: broker 1 is unreachable\n")
    );
    assert_eq!(metric(&app, "soundline_kafka_up").await, Some(0));
    hand.set_link(true, "");
    let (status, _, body) = get(&app, "/readyz", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ready: producing to topic in-process\n"));
    assert_eq!(metric(&app, "soundline_kafka_up").await, Some(1));
    let (status, headers, _) = get(&app, "/metrics", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain; version=0.0.4; charset=utf-8");
    let (status, _, body) = get(&app, "/healthz", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    state.shutdown().cancel();
    let (status, _, body) = get(&app, "/readyz", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down\n"));
    let (status, _, _) = get(&app, "/healthz", &[]).await;
    assert_eq!(status, StatusCode::OK, "alive while draining");
}

#[tokio::test]
async fn the_relay_serves_the_built_web_app_from_static_dir() {
    let dir = std::env::temp_dir().join(format!("soundline-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let page = "<!doctype html><title>Soundline</title><script type=\"module\">start();</script>";
    std::fs::write(dir.join("index.html"), page).expect("write index");
    std::fs::write(dir.join("app-0123456789abcdef.js"), "export {}").expect("write asset");
    let (state, _hand) = state(&[("SOUNDLINE_STATIC_DIR", dir.to_str().expect("utf-8 path"))]);
    let app = app(state);
    let (status, headers, body) = get(&app, "/", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, page));
    // sha256("start();"), base64: the inline loader script is allowed by its hash, nothing else inline.
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().expect("ascii");
    assert!(csp.starts_with("default-src 'self'; script-src 'self' 'wasm-unsafe-eval' 'sha256-"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    let (_, headers, _) = get(&app, "/app-0123456789abcdef.js", &[]).await;
    assert_eq!(headers[header::CACHE_CONTROL], "public, max-age=31536000, immutable");
    assert_eq!(get(&app, "/missing.js", &[]).await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(&app, "/healthz", &[]).await.0, StatusCode::OK, "API routes win over files");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_page_of_another_site_is_refused_with_what_to_configure() {
    let (state, _hand) = state(&[]);
    let app = app(state);
    for path in ["/ws/record", "/ws/feed"] {
        let headers = [&UPGRADE[..], &[("origin", "https://evil.example")]].concat();
        let (status, _, body) = get(&app, path, &headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(
            body,
            "origin https://evil.example may not open this WebSocket; add it to SOUNDLINE_ALLOWED_ORIGINS (or allowed_origins)\n"
        );
        // The relay's own page passes the check; here the request cannot upgrade (no connection behind it).
        let headers = [&UPGRADE[..], &[("origin", "http://relay.test")]].concat();
        assert_eq!(get(&app, path, &headers).await.0, StatusCode::UPGRADE_REQUIRED, "{path}");
    }
    assert_eq!(metric(&app, "soundline_origin_refused_total").await, Some(2));
}

/// The relay on a local port (the real accept loop, [`serve`]), with no broker behind it.
struct Local {
    addr: SocketAddr,
    state: AppState,
    hand: ByHand,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Local {
    async fn start(pairs: &[(&str, &str)]) -> Self {
        let (state, hand) = state(pairs);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        Self { addr, state, hand, stop: Some(stop) }
    }

    /// Opens a WebSocket to `path` with `headers`; the refusal's HTTP status if there is one.
    async fn open(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>, u16> {
        let mut request = format!("ws://{}{path}", self.addr).into_client_request().expect("request");
        for (name, value) in headers {
            request.headers_mut().insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    async fn metric(&self, name: &str) -> Option<i64> {
        metric(&app(self.state.clone()), name).await
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The next text message, skipping pings; `None` when the relay closed (with the close code).
async fn next_text(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> Result<String, Option<u16>> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("a message within 5 s");
        match message {
            Some(Ok(WsMessage::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(WsMessage::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("socket error: {e}"),
            None => return Err(None),
        }
    }
}

fn hello(car: &str, segment: &str) -> String {
    ClientMessage::Hello(Hello::new(Recording {
        device: DeviceInfo { car_id: car.into(), rail_type: 2 },
        location: LocationInfo { unit_id: "depot-7".into(), sty: "track 3".into() },
        segment_id: segment.into(),
        inspection_info: String::new(),
    }))
    .to_json()
}

#[tokio::test]
async fn websockets_from_other_origins_are_refused_unless_allowed() {
    let relay = Local::start(&[("SOUNDLINE_ALLOWED_ORIGINS", "https://app.example.com")]).await;
    for path in ["/ws/record", "/ws/feed"] {
        assert_eq!(
            relay.open(path, &[("Origin", "https://evil.example")]).await.err(),
            Some(403),
            "{path}: a page of another site"
        );
        let own = format!("http://{}", relay.addr);
        assert!(relay.open(path, &[("Origin", &own)]).await.is_ok(), "{path}: the relay's own page");
        assert!(relay.open(path, &[("Origin", "https://app.example.com")]).await.is_ok(), "{path}: an allowed origin");
    }
    assert_eq!(relay.metric("soundline_origin_refused_total").await, Some(2));
}

#[tokio::test]
async fn a_refused_token_gets_its_websocket_only_to_hear_unauthorized_4014_and_a_good_one_records() {
    let token = "a-static-token-of-thirty-two-bytes-at-least";
    let mut relay = Local::start(&[("SOUNDLINE_AUTH_TOKENS", &format!("depot-7:{token}"))]).await;
    relay.hand.set_link(true, "");
    let wrong = "Bearer not-the-token";
    for (headers, says) in [(&[][..], "authentication required"), (&[("Authorization", wrong)][..], "")] {
        let mut ws = relay.open("/ws/record", headers).await.expect("the WebSocket opens to carry the refusal");
        let error: ServerMessage = serde_json::from_str(&next_text(&mut ws).await.expect("the error")).expect("json");
        let ServerMessage::Error { code, message } = error else { panic!("expected an error, got {error:?}") };
        assert_eq!(code, ErrorCode::Unauthorized, "{message}");
        assert!(message.contains(says), "{message:?} should say {says:?}");
        assert_eq!(next_text(&mut ws).await, Err(Some(4014)));
    }
    assert_eq!(relay.metric("soundline_connections_refused_total{reason=\"auth_missing\"}").await, Some(1));
    assert_eq!(relay.metric("soundline_connections_refused_total{reason=\"auth_invalid\"}").await, Some(1));
    assert_eq!(relay.hand.pending(), 0, "nothing of a refused connection reaches the producer");

    // The token as a subprotocol, as a browser sends it: a frame goes to the producer and its ack carries the
    // offset Kafka gave it.
    let protocol = format!("soundline.v1, bearer.{token}");
    let mut ws = relay.open("/ws/record", &[("Sec-WebSocket-Protocol", &protocol)]).await.expect("accepted");
    ws.send(WsMessage::text(hello("CAR-7", "seg-7"))).await.expect("hello");
    let ready: ServerMessage = serde_json::from_str(&next_text(&mut ws).await.expect("ready")).expect("json");
    assert!(matches!(ready, ServerMessage::Ready { ref topic, .. } if topic == TOPIC), "{ready:?}");
    let pcm: Vec<i16> = (0..3200).map(|i| (i % 100) as i16).collect();
    let frame = soundline_shared::frame::encode_to_vec(0, 1_764_600_000_000, &pcm);
    ws.send(WsMessage::binary(frame)).await.expect("frame");
    let handed =
        tokio::time::timeout(Duration::from_secs(5), relay.hand.next()).await.expect("in 5 s").expect("a record");
    assert_eq!(handed.record.key.as_deref(), Some(&b"CAR-7"[..]));
    assert_eq!(handed.record.headers["seq"], b"0");
    assert_eq!(handed.record.headers["segmentId"], b"seg-7");
    handed.answer(Ok(Delivery { partition: 4, offset: 41 }));
    let ack: ServerMessage = serde_json::from_str(&next_text(&mut ws).await.expect("ack")).expect("json");
    assert_eq!(ack, ServerMessage::Ack { seq: 0, partition: 4, offset: 41 });
    ws.close(None).await.expect("close");
}

/// Thousands separated by a space, as docs/protocol.md writes numbers.
fn spaced(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(d);
    }
    out
}

#[test]
fn the_protocol_doc_states_the_message_and_header_limits_the_relay_enforces() {
    let doc = include_str!("../../../docs/protocol.md");
    let message =
        format!("A WebSocket message to the relay is at most {} bytes on both endpoints", spaced(MAX_TEXT_BYTES));
    assert!(doc.contains(&message), "docs/protocol.md lacks {message:?}");
    let default = crate::config::SETTINGS
        .iter()
        .find(|s| s.key == "max_header_bytes")
        .and_then(|s| s.default.clone())
        .and_then(|d| d.parse::<usize>().ok())
        .expect("max_header_bytes has a default");
    let row = format!("| `max_header_bytes` | {}:", spaced(default));
    assert!(doc.contains(&row), "docs/protocol.md lacks {row:?}");
}
