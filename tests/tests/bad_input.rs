//! Bad input on `/ws/record`, one test per kind: each gets its documented error code and close code, and a
//! healthy recorder on another connection of the same relay keeps streaming and getting acks throughout.

use soundline_shared::control::{ClientMessage, ErrorCode, Hello};
use soundline_shared::frame;
use soundline_tests::random_topic;
use soundline_tests::recorder::{Recorder, recording, samples};
use soundline_tests::relay::{InProcess, config, http_get};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

const TS: i64 = 1_764_000_000_000;

fn hello_json() -> String {
    ClientMessage::Hello(Hello::new(recording("CAR-BAD", "seg-bad"))).to_json()
}

/// Starts a relay, streams 5 frames from a healthy recorder, runs `bad` on a second connection and checks
/// the error it provokes, then streams 5 more healthy frames and checks the error was counted in /metrics.
async fn check<F, Fut>(bad: F, want: ErrorCode, message_part: &str)
where
    F: FnOnce(Recorder) -> Fut,
    Fut: std::future::Future<Output = Recorder>,
{
    let topic = random_topic("bad");
    let relay = InProcess::start(config(&[("SOUNDLINE_TOPIC", &topic)])).await;
    relay.wait_ready().await;
    let healthy_rec = recording("CAR-OK", "seg-ok");
    let mut healthy = Recorder::start(&relay.ws("/ws/record"), &healthy_rec).await;
    for seq in 0..5 {
        healthy.send_frame(seq, TS + i64::from(seq) * 200, &samples("seg-ok", seq, 3200)).await;
    }
    assert_eq!(healthy.acks(5).await.len(), 5);

    let mut bad_client = bad(Recorder::connect(&relay.ws("/ws/record")).await).await;
    let (code, message, close) = bad_client.expect_error().await;
    assert_eq!(code, want, "error code (message: {message})");
    assert_eq!(close, want.close_code(), "close code of {want}");
    assert!(message.contains(message_part), "message {message:?} should mention {message_part:?}");

    for seq in 5..10 {
        healthy.send_frame(seq, TS + i64::from(seq) * 200, &samples("seg-ok", seq, 3200)).await;
    }
    let acks = healthy.acks(5).await;
    assert_eq!(acks.iter().map(|a| a.0).collect::<Vec<_>>(), [5, 6, 7, 8, 9], "the healthy recorder carries on");
    healthy.close().await;
    let (_, metrics) = http_get(relay.addr, "/metrics").await.expect("metrics");
    assert!(
        metrics.contains(&format!("soundline_errors_total{{code=\"{want}\"}} 1")),
        "{want} counted once:\n{metrics}"
    );
    let (status, _) = http_get(relay.addr, "/healthz").await.expect("healthz");
    assert_eq!(status, 200);
    relay.stop().await;
}

async fn with_hello(mut r: Recorder) -> Recorder {
    r.send_text(&hello_json()).await;
    let _ready = r.next().await;
    r
}

#[tokio::test]
async fn binary_frame_before_hello_is_hello_required() {
    check(
        |mut r| async move {
            r.send_frame(0, TS, &[1, 2, 3]).await;
            r
        },
        ErrorCode::HelloRequired,
        "hello",
    )
    .await;
}

#[tokio::test]
async fn text_where_a_frame_is_expected_is_unexpected_text() {
    check(
        |r| async move {
            let mut r = with_hello(r).await;
            r.send_text("{\"type\":\"hello\"}").await;
            r
        },
        ErrorCode::UnexpectedText,
        "only binary audio frames",
    )
    .await;
}

#[tokio::test]
async fn unknown_protocol_version_is_unsupported_protocol() {
    check(
        |mut r| async move {
            r.send_text(&hello_json().replace("\"protocol\":1", "\"protocol\":7")).await;
            r
        },
        ErrorCode::UnsupportedProtocol,
        "protocol version 7 is not supported",
    )
    .await;
}

#[tokio::test]
async fn hello_that_is_not_json_is_bad_hello() {
    check(
        |mut r| async move {
            r.send_text("hello relay").await;
            r
        },
        ErrorCode::BadHello,
        "not a JSON object",
    )
    .await;
}

#[tokio::test]
async fn hello_missing_a_field_is_bad_hello() {
    check(
        |mut r| async move {
            r.send_text(r#"{"type":"hello","protocol":1,"format":{"hz":16000,"bits":16,"channels":1}}"#).await;
            r
        },
        ErrorCode::BadHello,
        "missing field",
    )
    .await;
}

#[tokio::test]
async fn hello_with_an_oversized_field_is_bad_hello() {
    check(
        |mut r| async move {
            r.send_text(&hello_json().replace("CAR-BAD", &"C".repeat(10_000))).await;
            r
        },
        ErrorCode::BadHello,
        "deviceInfo.carID is 10000 bytes long",
    )
    .await;
}

#[tokio::test]
async fn hello_of_a_megabyte_is_message_too_big() {
    check(
        |mut r| async move {
            r.send_text(&hello_json().replace("test notes", &"n".repeat(1 << 20))).await;
            r
        },
        ErrorCode::MessageTooBig,
        "size limit",
    )
    .await;
}

#[tokio::test]
async fn wrong_sample_format_is_unsupported_format() {
    check(
        |mut r| async move {
            r.send_text(&hello_json().replace("\"hz\":16000", "\"hz\":44100")).await;
            r
        },
        ErrorCode::UnsupportedFormat,
        "44100/16/1",
    )
    .await;
}

#[tokio::test]
async fn frame_with_a_bad_magic_is_bad_frame() {
    check(
        |r| async move {
            let mut r = with_hello(r).await;
            let mut bytes = frame::encode_to_vec(0, TS, &[1, 2]);
            bytes[0] = b'X';
            r.send_binary(bytes).await;
            r
        },
        ErrorCode::BadFrame,
        "magic",
    )
    .await;
}

#[tokio::test]
async fn truncated_frame_header_is_bad_frame() {
    check(
        |r| async move {
            let mut r = with_hello(r).await;
            r.send_binary(b"SL\x01\x00\x00".to_vec()).await;
            r
        },
        ErrorCode::BadFrame,
        "incomplete",
    )
    .await;
}

#[tokio::test]
async fn frame_announcing_more_samples_than_allowed_is_frame_too_large() {
    check(
        |r| async move {
            let mut r = with_hello(r).await;
            let mut bytes = frame::encode_to_vec(0, TS, &[1, 2]);
            bytes[16..20].copy_from_slice(&4_000_000u32.to_le_bytes());
            r.send_binary(bytes).await;
            r
        },
        ErrorCode::FrameTooLarge,
        "at most 32000",
    )
    .await;
}

#[tokio::test]
async fn binary_message_over_the_size_limit_is_message_too_big() {
    check(
        |r| async move {
            let mut r = with_hello(r).await;
            r.send_binary(vec![0u8; 256 * 1024]).await;
            r
        },
        ErrorCode::MessageTooBig,
        "size limit",
    )
    .await;
}

#[tokio::test]
async fn sequence_gap_is_sequence_out_of_order_after_acking_the_good_frames() {
    check(
        |r| async move {
            let mut r = with_hello(r).await;
            r.send_frame(0, TS, &[1; 160]).await;
            r.send_frame(1, TS + 10, &[2; 160]).await;
            r.send_frame(3, TS + 30, &[3; 160]).await;
            let acks = r.acks(2).await;
            assert_eq!(acks.iter().map(|a| a.0).collect::<Vec<_>>(), [0, 1], "frames before the gap are acked");
            r
        },
        ErrorCode::SequenceOutOfOrder,
        "expected seq 2, got 3",
    )
    .await;
}

#[tokio::test]
async fn invalid_utf8_text_is_invalid_utf8() {
    check(
        |mut r| async move {
            r.send_raw(Message::Frame(Frame::message(vec![0xff, 0xfe, 0x7b], OpCode::Data(Data::Text), true))).await;
            r
        },
        ErrorCode::InvalidUtf8,
        "UTF-8",
    )
    .await;
}
