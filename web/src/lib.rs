//! Soundline's browser recorder, compiled to WebAssembly and loaded by `www/index.html` (built with Trunk).
//!
//! Where it sits: this crate is the first hop of an audio frame. The page takes the microphone through
//! WebAudio, resamples to 16 kHz mono in Rust (`soundline_shared::dsp`), encodes frames with
//! `soundline_shared::frame` and streams them to the relay's `/ws/record`; the feed panel reads `/ws/feed`.
//!
//! This first version only boots the module and shows which protocol version the page speaks.
#![deny(unsafe_code)]

pub mod pipeline;
pub mod uplink;

use wasm_bindgen::prelude::*;

/// Entry point, run by the Trunk-generated loader once the module is instantiated.
#[wasm_bindgen(start)]
pub fn start() -> Result<(), JsValue> {
    let document = web_sys::window().and_then(|w| w.document()).ok_or("no document")?;
    if let Some(status) = document.get_element_by_id("status") {
        status.set_text_content(Some(&status_line()));
    }
    Ok(())
}

/// The line the page shows once the module runs.
pub fn status_line() -> String {
    format!("Recorder module loaded (protocol v{}).", soundline_shared::PROTOCOL_VERSION)
}
