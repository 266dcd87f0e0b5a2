//! Soundline's browser recorder, compiled to WebAssembly and loaded by `www/index.html` (built with Trunk).
//!
//! The first hop of an audio frame, and the last one back:
//!
//! ```text
//!  www/capture-worklet.js   128-frame quanta -> ~20 ms blocks, off the audio thread
//!  capture.rs               getUserMedia, AudioContext at the device's rate, the worklet node
//!  pipeline.rs              resample to 16 kHz -> i16 (clipping counted) -> frames with seq + timestamp
//!  outbox/                  every frame on the device (IndexedDB) until acked: the store (mod.rs), a second
//!                           per durable write (writer.rs), one uploader per recording across tabs (lock.rs),
//!                           the storage bound (quota.rs)
//!  uplink/                  what is in flight and what waits in the outbox, backoff (mod.rs, pure), the
//!                           WebSocket to /ws/record (socket.rs), earlier pages' recordings (recover.rs)
//!  recordings/              what reached Kafka, as recordings: the list's subscription to /ws/feed without PCM
//!                           (subscription.rs), rows per segment (mod.rs), one recording's audio (fetch.rs),
//!                           WAV (wav.rs), spectrogram (spectrogram.rs), the panel and player (view.rs)
//!  page.rs                  the form, Start/Stop, meter, counters, errors, "Waiting to upload"
//!  awake.rs                 the screen wake lock while recording or uploading
//!  www/sw.js                the service worker: the page opens offline (this build's files, cached)
//! ```
//!
//! `pipeline`, `uplink`'s flow and `outbox::quota` are plain Rust, tested natively; the rest is Web API glue,
//! tested in Chromium (`web/tests/in_browser.rs`, and the end-to-end tests in `tests/tests/`).
#![deny(unsafe_code)]

pub mod awake;
pub mod capture;
pub mod i18n;
pub mod outbox;
pub mod page;
pub mod pipeline;
pub mod recordings;
pub mod uplink;

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

/// The element `#id` of `doc` as a `T`, or an error naming what is wrong with the page.
pub(crate) fn by_id<T: JsCast>(doc: &web_sys::Document, id: &str) -> Result<T, JsValue> {
    doc.get_element_by_id(id)
        .ok_or_else(|| JsValue::from_str(&format!("#{id} is missing")))?
        .dyn_into::<T>()
        .map_err(|_| format!("#{id} has the wrong type").into())
}

/// A WebSocket's handlers, as `gloo` listeners: dropping it unhooks them, so that a socket given up on (replaced,
/// closed, timed out) never reaches its owner again.
pub(crate) struct SocketHooks {
    _open: gloo_events::EventListener,
    _message: gloo_events::EventListener,
    _close: gloo_events::EventListener,
}

impl SocketHooks {
    /// Hooks `on_open`, `on_text` (text messages; binary ones are not expected) and `on_close` (the close code).
    pub(crate) fn new(
        ws: &web_sys::WebSocket,
        mut on_open: impl FnMut() + 'static,
        mut on_text: impl FnMut(String) + 'static,
        mut on_close: impl FnMut(u16) + 'static,
    ) -> Self {
        use gloo_events::EventListener;
        Self {
            _open: EventListener::new(ws, "open", move |_| on_open()),
            _message: EventListener::new(ws, "message", move |e| {
                if let Some(text) = e.dyn_ref::<web_sys::MessageEvent>().and_then(|m| m.data().as_string()) {
                    on_text(text);
                }
            }),
            _close: EventListener::new(ws, "close", move |e| {
                on_close(e.dyn_ref::<web_sys::CloseEvent>().map_or(1006, web_sys::CloseEvent::code));
            }),
        }
    }
}

/// Opens a WebSocket offering the `soundline.v1` subprotocol and, when the technician entered one, the access
/// token as a second subprotocol `bearer.<token>`: the one header a page may set on a WebSocket, so the token
/// stays out of the URL (and out of access logs). The relay selects `soundline.v1`.
pub(crate) fn open_socket(url: &str, token: &str) -> Result<web_sys::WebSocket, JsValue> {
    let protocols: js_sys::Array = socket_protocols(token).iter().map(|p| JsValue::from_str(p)).collect();
    web_sys::WebSocket::new_with_str_sequence(url, &protocols)
}

/// The subprotocols [`open_socket`] offers.
pub(crate) fn socket_protocols(token: &str) -> Vec<String> {
    let token = token.trim();
    let mut protocols = vec!["soundline.v1".to_owned()];
    if !token.is_empty() {
        protocols.push(format!("bearer.{token}"));
    }
    protocols
}

/// Entry point, run by the Trunk-generated loader once the module is instantiated.
#[wasm_bindgen(start)]
pub fn start() -> Result<(), JsValue> {
    page::init().inspect_err(|e| {
        if let Some(status) = web_sys::window().and_then(|w| w.document()).and_then(|d| d.get_element_by_id("status")) {
            status.set_text_content(Some(&i18n::tf(i18n::Key::CouldNotStart, &[&format!("{e:?}")])));
        }
    })
}
