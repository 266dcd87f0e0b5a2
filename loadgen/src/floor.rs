//! `soundline-floor`: the least any relay must do per audio frame, run on the relay's own stack, so that the
//! relay's CPU per frame can be read against it (`make bench`, BENCHMARKS.md "The floor").
//!
//! It speaks `/ws/record` as the relay does (hello, `ready`, binary frames, an `ack` per frame in order) through
//! the same parts: axum's WebSocket on tokio with two runtime threads, reads of 16 KiB, `TCP_NODELAY`, mimalloc.
//! Per frame it does what no relay can skip: read the message, decode the frame, write its AICP_SOUND envelope
//! (the recording's template: a uuid, one base64 pass over the PCM and the JSON around it) and answer with an
//! ack. Nothing more: the envelope is dropped, no Kafka is asked (the ack's offset is the frame's count), no
//! sequence is checked, no resend remembered, nothing is fanned out. What the relay spends beyond this is what
//! Kafka (batching, compression, requests), the feed and its safety nets cost.
//!
//! ```text
//! soundline-floor --listen 127.0.0.1:28081
//! soundline-loadgen --relay 127.0.0.1:28081 --relay-pid PID --no-kafka --recorders 2000 --duration-s 40
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

use anyhow::Context;
use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::routing::get;
use axum::serve::ListenerExt as _;
use clap::Parser;
use futures_util::StreamExt as _;
use soundline_shared::control::{ClientMessage, Hello, ServerMessage};
use soundline_shared::envelope::{EnvelopeTemplate, Stamp};
use soundline_shared::frame::AudioFrame;

/// As the relay: the allocator decides part of the per-frame cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The largest frame accepted, in samples (the relay's default `max_frame_samples`: 2 s).
const MAX_FRAME_SAMPLES: u32 = 32_000;

#[derive(Parser, Debug)]
#[command(about = "The per-frame floor of a Soundline relay: /ws/record with envelopes built and dropped, no Kafka")]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:28081")]
    listen: SocketAddr,
    /// Runtime threads (the relay's default: 2).
    #[arg(long, default_value_t = 2)]
    worker_threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads.max(1))
        .enable_all()
        .build()
        .context("start the runtime")?
        .block_on(serve(args.listen))
}

async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listen on {listen}"))?;
    let app = Router::new()
        .route("/ws/record", get(|ws: WebSocketUpgrade| async { ws.read_buffer_size(16 * 1024).on_upgrade(recorder) }))
        .route("/readyz", get(|| async { "ready\n" }));
    // As the relay says it: tests read the port from this line.
    println!("listening on http://{}", listener.local_addr().context("the listener's address")?);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await.context("serve")
}

/// Every ack's offset: a count, as one partition would give.
static OFFSET: AtomicI64 = AtomicI64::new(0);

/// One recorder: the hello, then per frame its envelope and its ack, until it leaves or breaks the protocol.
async fn recorder(mut socket: WebSocket) {
    let template = match socket.next().await {
        Some(Ok(Message::Text(text))) => match ClientMessage::parse(&text) {
            Ok(ClientMessage::Hello(Hello { recording, .. })) => {
                EnvelopeTemplate::new(&Stamp { ver: "1.0".into(), ..Stamp::default() }, &recording)
            }
            Err(_) => return,
        },
        _ => return,
    };
    let ready = ServerMessage::Ready {
        protocol: soundline_shared::PROTOCOL_VERSION,
        topic: "floor".into(),
        max_frame_samples: MAX_FRAME_SAMPLES,
    };
    if socket.send(Message::Text(ready.to_json().into())).await.is_err() {
        return;
    }
    while let Some(Ok(msg)) = socket.next().await {
        let Message::Binary(bytes) = msg else { continue };
        let Ok(frame) = AudioFrame::decode(&bytes, MAX_FRAME_SAMPLES) else { return };
        let mut uuid_buf = uuid::Uuid::encode_buffer();
        let uuid = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut uuid_buf);
        let mut envelope = Vec::new();
        template.write_json(uuid, frame.capture_ts_ms, frame.pcm_le, &mut envelope);
        std::hint::black_box(&envelope);
        let ack = ServerMessage::Ack { seq: frame.seq, partition: 0, offset: OFFSET.fetch_add(1, Relaxed) };
        if socket.send(Message::Text(ack.to_json().into())).await.is_err() {
            return;
        }
    }
}
