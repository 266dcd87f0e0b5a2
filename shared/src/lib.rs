//! Soundline's shared core, compiled into both the browser recorder (wasm32) and the relay (native).
//!
//! An audio frame's path from the microphone to Kafka and back crosses this crate three times:
//!
//! ```text
//!  browser (web/)                        relay (relay/)                         Kafka
//!  ─────────────                         ──────────────                         ─────
//!  mic ─► resample ─► frame::encode ──ws──► frame::decode ─► Envelope::build ─► record
//!         (dsp/)      (control: hello)      (control: ack)   (envelope.rs)        │
//!                                                                                 │
//!  play ◄─ Envelope::parse ◄────────────ws── feed ◄───────────────────────────────┘
//! ```
//!
//! - [`envelope`]: the `AICP_SOUND` JSON envelope that downstream consumers already read, field for field.
//! - [`frame`]: the binary audio frame on the WebSocket (header + little-endian PCM). Bytes only, no I/O.
//! - [`dsp`]: the resampler (capture rate to 16 kHz), tested natively, compiled into the wasm recorder.
//! - [`control`]: the JSON control messages (hello, ready, ack, status, error) and the documented close codes.
//! - [`recording`]: the recording metadata a technician enters, shared by the hello and the envelope.
//! - [`feed`]: what a consumed record holds (envelope, other JSON, opaque bytes), for the feed and `tail`.
//! - [`backoff`]: the one retry backoff (exponential, with jitter) of the page, the feed and the relay.
//!
//! Nothing here is async or browser-specific, so every rule of the wire format is tested natively.
//! `docs/protocol.md` is the prose version of [`frame`] and [`control`].
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod backoff;
pub mod control;
pub mod dsp;
pub mod envelope;
pub mod feed;
pub mod frame;
pub mod recording;

/// The one sample rate Soundline puts into Kafka: 16 kHz.
pub const SAMPLE_RATE_HZ: u32 = 16_000;
/// The one sample width Soundline puts into Kafka: signed 16-bit, little-endian.
pub const BITS_PER_SAMPLE: u32 = 16;
/// Audio is mono.
pub const CHANNELS: u32 = 1;
/// Version of the browser <-> relay protocol described in `docs/protocol.md`.
pub const PROTOCOL_VERSION: u32 = 1;
