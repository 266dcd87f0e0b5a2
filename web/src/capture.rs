//! The microphone: getUserMedia, an AudioContext at the device's own rate, and the AudioWorklet node whose blocks
//! feed the pipeline. The only Web Audio glue on the capture side; everything after the blocks is plain Rust.
//!
//! The context is never forced to a sample rate (Firefox refuses mismatched rates, and forced rates pitch some
//! headsets wrong); the pipeline resamples whatever the device gives. It is created (or resumed) inside the click
//! that starts recording, as autoplay policies require. Echo cancellation, noise suppression and automatic gain
//! are off unless the technician turns them on: inspection audio must be raw.

use gloo_events::EventListener;
use js_sys::{Array, Float32Array, Object, Reflect};

use crate::i18n::{Key, t, tf};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    AudioContext, AudioWorkletNode, AudioWorkletNodeOptions, MediaStream, MediaStreamAudioSourceNode,
    MediaStreamConstraints, MessageEvent,
};

/// A running capture; dropping it does not stop it, [`Capture::stop`] does.
pub struct Capture {
    context: AudioContext,
    stream: MediaStream,
    node: AudioWorkletNode,
    _source: MediaStreamAudioSourceNode,
    /// The worklet's blocks, and the context's state changes; [`Capture::stop`] drops them.
    on_block: Option<EventListener>,
    on_state: Option<EventListener>,
}

/// Why the microphone could not start, in the words the page shows.
pub fn describe_error(e: &JsValue) -> String {
    let name = Reflect::get(e, &"name".into()).ok().and_then(|n| n.as_string()).unwrap_or_default();
    match name.as_str() {
        "NotAllowedError" | "SecurityError" => t(Key::MicDenied).into(),
        "NotFoundError" | "OverconstrainedError" => t(Key::MicMissing).into(),
        "NotReadableError" => t(Key::MicBusy).into(),
        _ => tf(Key::MicOther, &[&e.as_string().unwrap_or_else(|| format!("{e:?}"))]),
    }
}

impl Capture {
    /// Creates and resumes the AudioContext. Call synchronously inside the click that starts recording (before any
    /// `await`): Safari and Chrome only let audio start from a user gesture.
    ///
    /// # Errors
    ///
    /// The browser has no Web Audio.
    pub fn context_in_gesture() -> Result<AudioContext, JsValue> {
        let context = AudioContext::new()?;
        let _ = context.resume();
        Ok(context)
    }

    /// Opens the microphone `device_id` (or the default) on `context` (from [`Capture::context_in_gesture`]) and
    /// calls `on_block` with each block of samples at [`Capture::sample_rate`].
    ///
    /// # Errors
    ///
    /// The browser's error (denied, no device, ...); [`describe_error`] words it for the page.
    pub async fn start(
        context: AudioContext,
        device_id: Option<&str>,
        processing: bool,
        mut on_block: impl FnMut(&[f32]) + 'static,
    ) -> Result<Self, JsValue> {
        let window = web_sys::window().ok_or("no window")?;
        let audio = Object::new();
        for key in ["echoCancellation", "noiseSuppression", "autoGainControl"] {
            Reflect::set(&audio, &key.into(), &processing.into())?;
        }
        Reflect::set(&audio, &"channelCount".into(), &1.into())?;
        if let Some(id) = device_id.filter(|id| !id.is_empty()) {
            let exact = Object::new();
            Reflect::set(&exact, &"exact".into(), &id.into())?;
            Reflect::set(&audio, &"deviceId".into(), &exact)?;
        }
        let constraints = MediaStreamConstraints::new();
        constraints.set_audio(&audio);
        let devices = window.navigator().media_devices()?;
        let stream: MediaStream =
            JsFuture::from(devices.get_user_media_with_constraints(&constraints)?).await?.dyn_into()?;

        JsFuture::from(context.resume()?).await?;
        JsFuture::from(context.audio_worklet()?.add_module("capture-worklet.js")?).await?;
        let source = context.create_media_stream_source(&stream)?;

        // ~20 ms blocks at the device's rate.
        let block_frames = (context.sample_rate() / 50.0).round() as u32;
        let options = AudioWorkletNodeOptions::new();
        let processor_options = Object::new();
        Reflect::set(&processor_options, &"blockFrames".into(), &block_frames.into())?;
        options.set_processor_options(Some(&processor_options));
        options.set_number_of_inputs(1);
        // No outputs: the node is a sink, processed without being wired to the speakers.
        options.set_number_of_outputs(0);
        let node = AudioWorkletNode::new_with_options(&context, "soundline-capture", &options)?;
        let port = node.port()?;
        let return_port = port.clone();
        let mut samples = Vec::with_capacity(block_frames as usize);
        let on_block = EventListener::new(&port, "message", move |e| {
            let Some(e) = e.dyn_ref::<MessageEvent>() else { return };
            let Ok(block) = e.data().dyn_into::<Float32Array>() else { return };
            samples.resize(block.length() as usize, 0.0);
            block.copy_to(&mut samples);
            // Hand the buffer back to the worklet's pool.
            let _ = return_port.post_message_with_transferable(&block, &Array::of1(&block.buffer()));
            on_block(&samples);
        });
        // A listener added with addEventListener (unlike `onmessage`) needs the port started.
        port.start();
        source.connect_with_audio_node(&node)?;
        Ok(Self { context, stream, node, _source: source, on_block: Some(on_block), on_state: None })
    }

    /// Calls `f` with whether capture runs, each time the browser suspends or resumes the AudioContext (an iOS
    /// interruption, a phone call, the system taking the microphone).
    pub fn on_running_change(&mut self, mut f: impl FnMut(bool) + 'static) {
        let context = self.context.clone();
        self.on_state = Some(EventListener::new(&self.context, "statechange", move |_| {
            f(context.state() == web_sys::AudioContextState::Running);
        }));
    }

    /// The capture rate (the device's).
    pub fn sample_rate(&self) -> u32 {
        self.context.sample_rate() as u32
    }

    /// Stops the microphone and the audio graph.
    pub fn stop(&mut self) {
        self.on_state = None;
        self.on_block = None;
        let _ = self.node.disconnect();
        for track in self.stream.get_tracks().iter() {
            if let Ok(track) = track.dyn_into::<web_sys::MediaStreamTrack>() {
                track.stop();
            }
        }
        let _ = self.context.close();
    }
}
