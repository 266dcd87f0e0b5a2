//! The relay's doors, against real Kafka: authentication (static tokens, HS256 JWTs), the per-client connection
//! share, throttling, idle and hello timeouts with keepalive pings, slow HTTP headers, and TLS termination.
//! Every refusal is checked for its documented close code or HTTP status, and for its count in `/metrics`.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use soundline_relay::doors::auth::sign_jwt;
use soundline_shared::control::{ClientMessage, ErrorCode, Hello, ServerMessage};
use soundline_shared::feed::From;
use soundline_shared::frame;
use soundline_tests::random_topic;
use soundline_tests::recorder::{Event, Recorder, recording, samples};
use soundline_tests::relay::{
    InProcess, config, http_get, metric_settles, metric_until, raw_tcp, relay_bin, slow_loris,
};
use soundline_tests::subscriber::{FeedEvent, Subscriber, subscription};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const TS: i64 = 1_764_000_000_000;
const TOKEN: &str = "depot-7-token-0123456789";
const JWT_KEY: &str = "soundline-test-hs256-key-of-32-bytes!";

fn protocol_with(token: &str) -> String {
    format!("soundline.v1, bearer.{token}")
}

fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

async fn metric(relay: &InProcess, name: &str) -> i64 {
    soundline_tests::relay::metric(relay.addr, name).await.unwrap_or_else(|| panic!("no metric {name}"))
}

async fn expect_refused(url: &str, headers: &[(&str, &str)], message_part: &str) {
    let mut r = Recorder::connect_with(url, headers).await.expect("the WebSocket opens to carry the refusal");
    r.send_text(&ClientMessage::Hello(Hello::new(recording("CAR-X", "seg-x"))).to_json()).await;
    let (code, message, close) = r.expect_error().await;
    assert_eq!((code, close), (ErrorCode::Unauthorized, 4014), "{message}");
    assert!(message.contains(message_part), "{message:?} should say {message_part:?}");
}

async fn records_a_frame(url: &str, headers: &[(&str, &str)], car: &str) {
    let mut r = Recorder::connect_with(url, headers).await.expect("connect");
    match r.hello(&recording(car, &format!("seg-{car}"))).await {
        Event::Server(ServerMessage::Ready { .. }) => {}
        other => panic!("expected ready, got {other:?}"),
    }
    r.send_frame(0, TS, &samples(car, 0, 1600)).await;
    assert_eq!(r.acks(1).await[0].0, 0);
    r.close().await;
}

#[tokio::test]
async fn static_tokens_let_in_whom_they_name_and_no_one_else() {
    let topic = random_topic("auth");
    let tokens = format!("depot-7:{TOKEN},depot-9:another-token-abcdefghij");
    let relay = InProcess::start(config(&[("SOUNDLINE_TOPIC", &topic), ("SOUNDLINE_AUTH_TOKENS", &tokens)])).await;
    relay.wait_ready().await;
    let url = relay.ws("/ws/record");

    expect_refused(&url, &[], "authentication required").await;
    let wrong = protocol_with("not-a-token-of-this-relay");
    expect_refused(&url, &[("Sec-WebSocket-Protocol", &wrong)], "not valid").await;

    // As a browser sends it: subprotocols soundline.v1 + bearer.<token>; the relay must select soundline.v1
    // (tungstenite fails the handshake otherwise).
    records_a_frame(&url, &[("Sec-WebSocket-Protocol", &protocol_with(TOKEN))], "CAR-A").await;
    // As a tool sends it.
    records_a_frame(&url, &[("Authorization", &format!("Bearer {TOKEN}"))], "CAR-B").await;

    // The feed has the same door.
    let feed = relay.ws("/ws/feed");
    let mut anonymous = Subscriber::connect_with(&feed, &[], &subscription(None, From::Earliest)).await.expect("open");
    assert!(matches!(anonymous.next_event().await, FeedEvent::Error(ErrorCode::Unauthorized, _)));
    assert_eq!(anonymous.next_event().await, FeedEvent::Closed(Some(4014)));
    let auth = format!("Bearer {TOKEN}");
    let mut s = Subscriber::connect_with(&feed, &[("Authorization", &auth)], &subscription(None, From::Earliest))
        .await
        .expect("open");
    assert!(matches!(s.next_event().await, FeedEvent::Feed(_)), "subscribed");
    assert_eq!(s.records(2).await.len(), 2, "both recordings, read with the token");
    s.close().await;

    assert_eq!(metric(&relay, "soundline_connections_refused_total{reason=\"auth_missing\"}").await, 2);
    assert_eq!(metric(&relay, "soundline_connections_refused_total{reason=\"auth_invalid\"}").await, 1);
    assert_eq!(metric(&relay, "soundline_errors_total{code=\"unauthorized\"}").await, 3);
    let (_, metrics) = http_get(relay.addr, "/metrics").await.expect("metrics");
    assert!(!metrics.contains(TOKEN), "a token never appears in /metrics");
    relay.stop().await;
}

#[tokio::test]
async fn jwts_need_a_valid_signature_and_expiry_and_their_sub_names_the_recorder_in_logs() {
    let topic = random_topic("jwt");
    let log_path = std::env::temp_dir().join(format!("{topic}.log"));
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = tokio::process::Command::new(relay_bin())
        .arg("serve")
        .env("SOUNDLINE_KAFKA_BROKERS", soundline_tests::kafka_bootstrap())
        .env("SOUNDLINE_LISTEN", "127.0.0.1:0")
        .env("SOUNDLINE_TOPIC", &topic)
        .env("SOUNDLINE_AUTH_JWT_SECRET", JWT_KEY)
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn relay");
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line).await.expect("listen line");
    let addr = line.trim().strip_prefix("listening on http://").expect("listen line").to_owned();
    soundline_tests::relay::wait_ready(addr.parse().expect("addr")).await;
    let url = format!("ws://{addr}/ws/record");

    // The binary mints tokens with the configured key.
    let minted = std::process::Command::new(relay_bin())
        .args(["token", "--sub", "tech-42", "--ttl-s", "600"])
        .env("SOUNDLINE_KAFKA_BROKERS", soundline_tests::kafka_bootstrap())
        .env("SOUNDLINE_AUTH_JWT_SECRET", JWT_KEY)
        .output()
        .expect("soundline-relay token");
    assert!(minted.status.success(), "{}", String::from_utf8_lossy(&minted.stderr));
    let good = String::from_utf8(minted.stdout).expect("utf-8").trim().to_owned();
    records_a_frame(&url, &[("Sec-WebSocket-Protocol", &protocol_with(&good))], "CAR-JWT").await;

    let claims = |sub: &str, exp: i64| serde_json::json!({"sub": sub, "exp": exp});
    let expired = sign_jwt(JWT_KEY.as_bytes(), &claims("tech-42", now_s() - 3600));
    expect_refused(&url, &[("Sec-WebSocket-Protocol", &protocol_with(&expired))], "expired").await;
    let forged = sign_jwt(b"some other key that is 32 bytes!", &claims("tech-42", now_s() + 600));
    expect_refused(&url, &[("Sec-WebSocket-Protocol", &protocol_with(&forged))], "signature").await;
    let no_exp = sign_jwt(JWT_KEY.as_bytes(), &serde_json::json!({"sub": "tech-42"}));
    expect_refused(&url, &[("Sec-WebSocket-Protocol", &protocol_with(&no_exp))], "exp is required").await;

    child.kill().await.expect("kill");
    let logged = std::fs::read_to_string(&log_path).expect("log");
    let started = logged.lines().find(|l| l.contains("recording started")).unwrap_or_else(|| panic!("{logged}"));
    assert!(started.contains("who=tech-42"), "the JWT's sub names the recorder: {started}");
    assert!(started.contains("CAR-JWT"), "{started}");
    assert!(!logged.contains(&good), "a token never appears in the logs");
    let _ = std::fs::remove_file(&log_path);
}

#[tokio::test]
async fn each_client_address_gets_its_share_of_connections() {
    let topic = random_topic("share");
    let relay = InProcess::start(config(&[
        ("SOUNDLINE_TOPIC", &topic),
        ("SOUNDLINE_MAX_CONNECTIONS_PER_CLIENT", "3"),
        ("SOUNDLINE_CLIENT_IP_HEADER", "X-Forwarded-For"),
    ]))
    .await;
    relay.wait_ready().await;
    let url = relay.ws("/ws/record");
    // Behind an ingress every TCP peer is the ingress: the header's last address is the client.
    let first = [("X-Forwarded-For", "198.51.100.1, 10.0.0.1")];
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Recorder::connect_with(&url, &first).await.expect("within the share"));
    }
    let refused = Recorder::connect_with(&url, &first).await.err().expect("the fourth is refused");
    match *refused {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 429);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("10.0.0.1 already holds 3 connections"), "{body}");
        }
        other => panic!("expected HTTP 429, got {other}"),
    }
    // Another client is not affected, and a closed connection frees its slot.
    records_a_frame(&url, &[("X-Forwarded-For", "10.0.0.2")], "CAR-OTHER").await;
    held.pop().expect("one").close().await;
    // The slot is free once the relay has ended that connection (two of the share are open again).
    metric_until(relay.addr, "soundline_connections_active", Duration::from_secs(10), |v| v == Some(2)).await;
    records_a_frame(&url, &first, "CAR-AGAIN").await;
    assert_eq!(metric(&relay, "soundline_connections_refused_total{reason=\"per_client\"}").await, 1);
    relay.stop().await;
}

#[tokio::test]
async fn floods_are_slowed_down_not_dropped() {
    let topic = random_topic("throttle");
    let relay = InProcess::start(config(&[
        ("SOUNDLINE_TOPIC", &topic),
        ("SOUNDLINE_MAX_MESSAGES_PER_S", "50"),
        ("SOUNDLINE_MAX_BYTES_PER_S", "65536"),
    ]))
    .await;
    relay.wait_ready().await;
    let mut r = Recorder::start(&relay.ws("/ws/record"), &recording("CAR-FLOOD", "seg-flood")).await;
    // 150 tiny frames at once: one second of burst (50), then 50 per second.
    let started = Instant::now();
    for seq in 0..150 {
        r.send_frame(seq, TS + i64::from(seq) * 10, &samples("seg-flood", seq, 160)).await;
    }
    let acks = r.acks(150).await;
    assert_eq!(acks.iter().map(|a| a.0).collect::<Vec<_>>(), (0..150).collect::<Vec<_>>(), "every frame, in order");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1800), "100 frames over the burst at 50/s take ~2 s, took {took:?}");
    // Bytes: 4 one-second frames (32 000 bytes each) against 64 KiB/s.
    for seq in 150..154 {
        r.send_frame(seq, TS + i64::from(seq) * 1000, &samples("seg-flood", seq, 16_000)).await;
    }
    assert_eq!(r.acks(4).await.len(), 4);
    r.close().await;
    assert!(metric(&relay, "soundline_throttled_total{limit=\"messages\"}").await > 0);
    assert!(metric(&relay, "soundline_throttled_total{limit=\"bytes\"}").await > 0);
    let in_kafka = soundline_tests::read_all(&*soundline_tests::client().await, &topic, 6).await;
    assert_eq!(in_kafka.len(), 154, "throttling loses nothing");
    relay.stop().await;
}

#[tokio::test]
async fn silent_connections_are_closed_and_answering_ones_kept() {
    let topic = random_topic("idle");
    let relay = InProcess::start(config(&[
        ("SOUNDLINE_TOPIC", &topic),
        ("SOUNDLINE_HELLO_TIMEOUT_S", "2"),
        ("SOUNDLINE_IDLE_TIMEOUT_S", "4"),
        ("SOUNDLINE_PING_INTERVAL_S", "1"),
    ]))
    .await;
    relay.wait_ready().await;
    let url = relay.ws("/ws/record");

    // No hello.
    let mut mute = Recorder::connect(&url).await;
    let (code, message, close) = mute.expect_error().await;
    assert_eq!((code, close), (ErrorCode::IdleTimeout, 4015));
    assert!(message.contains("did not arrive within 2 s"), "{message}");

    // A hello, then a client that stops reading (so it answers no ping) and sends nothing.
    let mut gone = Recorder::start(&url, &recording("CAR-GONE", "seg-gone")).await;
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let (code, message, _) = gone.expect_error().await;
    assert_eq!(code, ErrorCode::IdleTimeout);
    assert!(message.contains("nothing arrived for 4 s"), "{message}");

    // A client that reads (and so answers pings) but records nothing stays connected past the idle timeout.
    let mut alive = Recorder::start(&url, &recording("CAR-ALIVE", "seg-alive")).await;
    let quiet = tokio::time::timeout(Duration::from_secs(7), alive.next()).await;
    assert!(quiet.is_err(), "nothing but pings for 7 s, got {quiet:?}");
    alive.send_frame(0, TS, &samples("seg-alive", 0, 1600)).await;
    assert_eq!(alive.acks(1).await[0].0, 0, "still served after 7 s of silence answered by pongs");
    alive.close().await;

    // The feed: a subscriber that stops reading is closed the same way.
    let mut sub = Subscriber::start(&relay.ws("/ws/feed"), &subscription(None, From::Live)).await;
    tokio::time::sleep(Duration::from_millis(5500)).await;
    assert!(matches!(sub.next_event().await, FeedEvent::Error(ErrorCode::IdleTimeout, _)));

    assert!(metric(&relay, "soundline_pings_sent_total").await >= 4);
    assert_eq!(metric(&relay, "soundline_errors_total{code=\"idle_timeout\"}").await, 3);
    relay.stop().await;
}

#[tokio::test]
async fn slow_or_silent_http_clients_are_cut_off() {
    let relay = InProcess::start(config(&[("SOUNDLINE_HELLO_TIMEOUT_S", "1")])).await;
    // Slow loris: headers one line every 300 ms, never finished.
    let cut = slow_loris(relay.addr, Duration::from_millis(300), Duration::from_secs(10)).await;
    let cut = cut.expect("the relay kept a trickling request open for 10 s");
    assert!(cut < Duration::from_secs(4), "cut after {cut:?}");
    // A connection that says nothing at all.
    let mut silent = tokio::net::TcpStream::connect(relay.addr).await.expect("connect");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(_) | Err(_))), "a silent connection is closed within 5 s");
    // What hyper refuses by itself is answered and counted too.
    let answer = raw_tcp(relay.addr, b"\x16\x03\x01\x02\x00garbage\r\n\r\n").await;
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 400"), "{answer}");
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(200_000));
    let answer = raw_tcp(relay.addr, big.as_bytes()).await;
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
    // Counted as each connection ends, which the client may see a moment before. Two header timeouts: the
    // trickle and the silent one.
    for (reason, n) in [("header_timeout", 2), ("bad_http", 1), ("headers_too_large", 1)] {
        let name = format!("soundline_connections_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(metric_settles(relay.addr, &name, n).await, Some(n), "{reason}");
    }
    assert_eq!(http_get(relay.addr, "/healthz").await.expect("healthz").0, 200);
    relay.stop().await;
}

/// A CA and a certificate for 127.0.0.1/localhost, made with openssl as scripts/kafka.sh does.
fn certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("write");
    let ca = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2"];
    run(&[&ca[..], &["-subj", "/CN=Soundline test CA"]].concat());
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "relay.key",
        "-out",
        "relay.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "relay.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "relay.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).expect("ca");
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("pem")).expect("add root");
    }
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await.expect("TLS handshake with the relay")
}

#[tokio::test]
async fn the_relay_terminates_tls_itself() {
    let dir = std::env::temp_dir().join(random_topic("tls"));
    std::fs::create_dir_all(&dir).expect("dir");
    certificates(&dir);
    let (cert, key) = (dir.join("relay.pem"), dir.join("relay.key"));
    let topic = random_topic("tls");
    let relay = InProcess::start(config(&[
        ("SOUNDLINE_TOPIC", &topic),
        ("SOUNDLINE_TLS_CERT_FILE", cert.to_str().expect("path")),
        ("SOUNDLINE_TLS_KEY_FILE", key.to_str().expect("path")),
        ("SOUNDLINE_HELLO_TIMEOUT_S", "2"),
    ]))
    .await;

    // HTTPS.
    let mut tls = tls_connect(relay.addr, &dir.join("ca.pem")).await;
    tls.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut response = String::new();
    let _ = tls.read_to_string(&mut response).await;
    assert!(response.starts_with("HTTP/1.1 "), "{response}");

    // WSS: a recording through the relay's own TLS.
    for _ in 0..300 {
        let mut tls = tls_connect(relay.addr, &dir.join("ca.pem")).await;
        tls.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.expect("write");
        let mut response = String::new();
        let _ = tls.read_to_string(&mut response).await;
        if response.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tls = tls_connect(relay.addr, &dir.join("ca.pem")).await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws/record", tls).await.expect("wss");
    let hello = ClientMessage::Hello(Hello::new(recording("CAR-TLS", "seg-tls"))).to_json();
    ws.send(Message::Text(hello.into())).await.expect("hello");
    ws.send(Message::Binary(frame::encode_to_vec(0, TS, &samples("seg-tls", 0, 1600)).into())).await.expect("frame");
    let mut said = Vec::new();
    while said.len() < 2 {
        match ws.next().await.expect("open").expect("message") {
            Message::Text(t) => said.push(ServerMessage::parse(&t).expect("json")),
            _ => continue,
        }
    }
    assert!(matches!(said[0], ServerMessage::Ready { .. }), "{said:?}");
    assert!(matches!(said[1], ServerMessage::Ack { seq: 0, .. }), "{said:?}");
    let _ = ws.close(None).await;

    // Plain HTTP to a TLS port: refused at the handshake, counted.
    let mut plain = tokio::net::TcpStream::connect(relay.addr).await.expect("connect");
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("ok"), "no plain answer on the TLS port");
    relay.stop().await;

    // A missing key file is one line and exit code 2.
    let out = std::process::Command::new(relay_bin())
        .args(["check-config"])
        .env("SOUNDLINE_KAFKA_BROKERS", "127.0.0.1:1")
        .env("SOUNDLINE_TLS_CERT_FILE", &cert)
        .env("SOUNDLINE_TLS_KEY_FILE", dir.join("missing.key"))
        .output()
        .expect("check-config");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SOUNDLINE_TLS_KEY_FILE") && stderr.contains("missing.key"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A GET of `/healthz` whose request line and headers come to exactly `head_bytes` bytes.
fn request_of(head_bytes: usize, headers: usize) -> Vec<u8> {
    let fixed = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".len();
    let per_header = (head_bytes - fixed) / headers;
    let mut out = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    let mut left = head_bytes - fixed;
    for i in 0..headers {
        let len = if i + 1 == headers { left } else { per_header };
        let name = format!("X-Fill-{i:03}: ");
        out.push_str(&name);
        out.push_str(&"f".repeat(len - name.len() - 2));
        out.push_str("\r\n");
        left -= len;
    }
    out.push_str("\r\n");
    assert_eq!(out.len(), head_bytes);
    out.into_bytes()
}

#[tokio::test]
async fn request_headers_are_capped_at_16_kib_by_default_and_as_configured() {
    let relay = InProcess::start(config(&[])).await;
    let refused = "soundline_connections_refused_total{reason=\"headers_too_large\"}";
    // At the cap, in one header or in many: served. One byte over, or a 64 KB header: 431, saying why.
    for (bytes, headers) in [(16_384, 1), (16_384, 40), (8_000, 1)] {
        let answer = raw_tcp(relay.addr, &request_of(bytes, headers)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{bytes} bytes in {headers} headers: {answer}");
    }
    for (n, (bytes, headers)) in [(16_385, 1), (16_385, 40), (65_536, 1)].into_iter().enumerate() {
        let answer = raw_tcp(relay.addr, &request_of(bytes, headers)).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{bytes} bytes in {headers} headers: {answer}");
        // Far over the cap, hyper's read buffer (the cap + 8 KiB) refuses first, with the bare status line.
        if bytes < 24_000 {
            assert!(answer.contains(&format!("are {bytes} bytes; at most 16384 are accepted")), "{answer}");
        }
        assert_eq!(metric_settles(relay.addr, refused, n as i64 + 1).await, Some(n as i64 + 1));
    }
    relay.stop().await;

    let relay = InProcess::start(config(&[("SOUNDLINE_MAX_HEADER_BYTES", "8192")])).await;
    assert!(raw_tcp(relay.addr, &request_of(8_192, 3)).await.starts_with("HTTP/1.1 200"));
    assert!(raw_tcp(relay.addr, &request_of(8_193, 3)).await.starts_with("HTTP/1.1 431"));
    // A WebSocket upgrade is an HTTP request like any other.
    let huge = format!("Bearer {}", "t".repeat(9_000));
    let refused_ws =
        Recorder::connect_with(&format!("ws://{}/ws/record", relay.addr), &[("Authorization", &huge)]).await;
    match refused_ws {
        Err(e) => assert!(e.to_string().contains("431"), "{e}"),
        Ok(_) => panic!("a 9 KB header upgraded to a WebSocket past an 8 KiB cap"),
    }
    relay.stop().await;
}
