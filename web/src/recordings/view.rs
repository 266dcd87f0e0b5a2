//! The recordings panel: one row per recording (growing live while it records), and for the one the technician
//! opens, its spectrogram and waveform, a player of the whole recording (position, seek) and its WAV. Browser
//! only; the model, WAV assembly and spectrogram are the pure modules beside this one.
//!
//! ```text
//!  feed frame ─► Recordings (model) ─► rows, redrawn at most 4 times a second (one click listener for all)
//!  Listen ─► fetch.rs (bounded read, PCM) ─► wav::assemble ─► spectrogram + waveform on canvases
//!                                                       └─► one AudioBuffer: Play / Pause / seek; WAV via a Blob URL
//! ```
//!
//! The spectrogram canvas: the image starts at x = [`LEFT`], one column per 16 ms hop (more than [`MAX_COLUMNS`]
//! are merged, keeping each bin's maximum), and bin `b` (`b * 31.25` Hz) is the row y = `BINS - 1 - b`: 8 kHz at the
//! top, 0 Hz at y = 256; axis labels in the margins.

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{
    AudioBuffer, AudioBufferSourceNode, AudioContext, CanvasRenderingContext2d, Document, Element, HtmlAnchorElement,
    HtmlButtonElement, HtmlCanvasElement, HtmlInputElement,
};

use super::spectrogram::{BINS, HOP, Spectrogram, Stft, colour, waveform};
use super::{FrameRef, Recording, Recordings, State, wav};
use crate::by_id;
use crate::i18n::{Key, t, tf};

/// Left margin of the spectrogram canvas (the kHz labels).
pub const LEFT: u32 = 44;
/// Bottom margin (the seconds labels).
pub const BOTTOM: u32 = 18;
/// Most columns drawn.
pub const MAX_COLUMNS: usize = 800;

struct Selected {
    recording: Recording,
    samples: Vec<i16>,
    buffer: Option<AudioBuffer>,
    wav_url: Option<String>,
}

struct Player {
    context: AudioContext,
    source: Option<AudioBufferSourceNode>,
    /// Where playback started in the recording (s), and the context time it started at.
    from_s: f64,
    started_at: f64,
    playing: bool,
}

struct ViewState {
    doc: Document,
    list: Element,
    detail: Element,
    title: Element,
    status: Element,
    play: HtmlButtonElement,
    position: HtmlInputElement,
    position_text: Element,
    download: HtmlAnchorElement,
    spectrogram: HtmlCanvasElement,
    waveform: HtmlCanvasElement,
    model: Recordings,
    own_car: Rc<RefCell<String>>,
    /// The feed's address and the token field, for fetches.
    url: String,
    token: Rc<RefCell<String>>,
    /// Recordings grouped by car (the supervisor view).
    grouped: bool,
    render_due: bool,
    selected: Option<Selected>,
    player: Option<Player>,
    /// The rows', Play's and the slider's listeners (removed with the view).
    listeners: Vec<gloo_events::EventListener>,
}

/// The panel; cheap to clone.
#[derive(Clone)]
pub struct View(Rc<RefCell<ViewState>>);

fn clock(ms: f64) -> String {
    let s = ms / 1000.0;
    format!("{}:{:04.1}", (s / 60.0) as u64, s % 60.0)
}

impl View {
    /// The panel in `doc` (`#feed` and the `#detail` elements); fetches go to the feed at `url`.
    ///
    /// # Errors
    ///
    /// An element is missing from the page.
    pub fn new(
        doc: &Document,
        url: String,
        token: Rc<RefCell<String>>,
        own_car: Rc<RefCell<String>>,
    ) -> Result<Self, JsValue> {
        let view = Self(Rc::new(RefCell::new(ViewState {
            doc: doc.clone(),
            list: by_id(doc, "feed")?,
            detail: by_id(doc, "detail")?,
            title: by_id(doc, "detail-title")?,
            status: by_id(doc, "detail-status")?,
            play: by_id(doc, "play")?,
            position: by_id(doc, "position")?,
            position_text: by_id(doc, "position-text")?,
            download: by_id(doc, "download")?,
            spectrogram: by_id(doc, "spectrogram")?,
            waveform: by_id(doc, "waveform")?,
            model: Recordings::default(),
            own_car,
            url,
            token,
            grouped: false,
            render_due: false,
            selected: None,
            player: None,
            listeners: Vec::new(),
        })));
        view.listen()?;
        Ok(view)
    }

    /// One click listener for every row's Listen button, one each for Play and the position slider: no closure
    /// per row or per record. They hold the view weakly and live as long as it does.
    fn listen(&self) -> Result<(), JsValue> {
        use gloo_events::EventListener;
        let weak = Rc::downgrade(&self.0);
        let me = move || weak.upgrade().map(View);
        let mut s = self.0.borrow_mut();
        let (open, play, seek) = (me.clone(), me.clone(), me);
        s.listeners = vec![
            EventListener::new(&s.list, "click", move |e| {
                let segment = e
                    .target()
                    .and_then(|t| t.dyn_into::<Element>().ok())
                    .and_then(|el| el.closest("button[data-segment]").ok().flatten())
                    .and_then(|b| b.get_attribute("data-segment"));
                if let (Some(segment), Some(view)) = (segment, open()) {
                    view.open(&segment);
                }
            }),
            EventListener::new(&s.play, "click", move |_| {
                if let Some(view) = play() {
                    view.toggle_play();
                }
            }),
            EventListener::new(&s.position, "input", move |_| {
                if let Some(view) = seek() {
                    view.seek();
                }
            }),
        ];
        Ok(())
    }

    /// A frame reached Kafka.
    pub fn add_frame(&self, segment_id: &str, car_id: &str, frame: FrameRef) {
        self.0.borrow_mut().model.add(segment_id, car_id, frame, js_sys::Date::now());
        self.render_soon();
    }

    /// An analysis result for a recording.
    pub fn add_result(&self, segment_id: &str, text: String) {
        // A result for a recording not listed yet waits in the model for its frames.
        if self.0.borrow_mut().model.add_result(segment_id, text) {
            self.render_soon();
        }
    }

    /// Forgets the list (a new subscription starts over); `grouped`: group by car (the supervisor view).
    pub fn reset(&self, grouped: bool) {
        let mut s = self.0.borrow_mut();
        s.model.clear();
        s.grouped = grouped;
        drop(s);
        self.render_soon();
    }

    /// Draws the rows within 250 ms (records arrive five a second per recording), and again every second while
    /// a recording is in progress, so that its state moves on when its frames stop.
    fn render_soon(&self) {
        if std::mem::replace(&mut self.0.borrow_mut().render_due, true) {
            return;
        }
        let me = self.clone();
        wasm_bindgen_futures::spawn_local(async move {
            gloo_timers::future::TimeoutFuture::new(250).await;
            me.0.borrow_mut().render_due = false;
            let live = me.render();
            if live {
                me.render_soon();
            }
        });
    }

    /// Draws the rows; returns whether any recording is still recording.
    fn render(&self) -> bool {
        let s = self.0.borrow();
        let now = js_sys::Date::now();
        s.list.set_inner_html("");
        let own = s.own_car.borrow().clone();
        let mut live = false;
        let groups: Vec<(Option<&str>, Vec<&Recording>)> = if s.grouped {
            s.model.by_car().into_iter().map(|(car, rows)| (Some(car), rows)).collect()
        } else {
            vec![(None, s.model.newest_first())]
        };
        if groups.iter().all(|(_, rows)| rows.is_empty()) {
            if let Ok(li) = s.doc.create_element("li") {
                li.set_text_content(Some(t(Key::NoRecordings)));
                let _ = s.list.append_child(&li);
            }
            return false;
        }
        for (car, rows) in groups {
            if let Some(car) = car
                && let Ok(h) = s.doc.create_element("li")
            {
                h.set_class_name("car");
                h.set_text_content(Some(car));
                let _ = s.list.append_child(&h);
            }
            for r in rows {
                let state = r.state(now);
                live |= state == State::Recording;
                let _ = row(&s.doc, &s.list, r, state, r.car_id == own);
            }
        }
        live
    }

    /// Opens a recording: fetches its audio, draws it, makes it playable and downloadable.
    fn open(&self, segment_id: &str) {
        let mut s = self.0.borrow_mut();
        let Some(recording) = s.model.get(segment_id).cloned() else { return };
        let Some((partition, first, last)) = recording.kafka() else { return };
        if s.player.is_none() {
            // Created inside the click: browsers let audio start only from a gesture.
            s.player = AudioContext::new().ok().map(|context| Player {
                context,
                source: None,
                from_s: 0.0,
                started_at: 0.0,
                playing: false,
            });
        }
        stop_source(&mut s);
        if let Some(old) = s.selected.take().and_then(|sel| sel.wav_url) {
            let _ = web_sys::Url::revoke_object_url(&old);
        }
        s.detail.remove_attribute("hidden").ok();
        let when = js_sys::Date::new(&JsValue::from_f64(recording.start_ms() as f64));
        let title =
            format!("{} · {}", recording.car_id, when.to_locale_time_string("default").as_string().unwrap_or_default());
        s.title.set_text_content(Some(&title));
        s.status.set_text_content(Some(t(Key::Fetching)));
        s.play.set_disabled(true);
        s.download.remove_attribute("href").ok();
        let (url, token) = (s.url.clone(), s.token.borrow().trim().to_owned());
        drop(s);
        let me = self.clone();
        let segment = segment_id.to_owned();
        wasm_bindgen_futures::spawn_local(async move {
            let result = super::fetch::recording(&url, &token, &segment, partition, first, last).await;
            me.fetched(&segment, recording, result);
        });
    }

    fn fetched(&self, segment_id: &str, mut recording: Recording, result: Result<super::fetch::Fetched, String>) {
        let mut s = self.0.borrow_mut();
        let got = match result {
            Ok(got) => got,
            Err(e) => return s.status.set_text_content(Some(&tf(Key::FetchFailed, &[&e]))),
        };
        // What came back is the recording as Kafka has it now (it may have grown since the row was drawn).
        if let Some(now) = s.model.get(segment_id) {
            recording = now.clone();
        }
        let frame_samples = recording.frame_ms() as usize * 16;
        let (samples, missing) = wav::assemble(&got.frames, frame_samples);
        let missing_text = match missing.len() {
            0 => t(Key::NoneMissing).to_owned(),
            n => tf(Key::MissingSilence, &[&n, &format!("{:.1}", (n * frame_samples) as f64 / 16_000.0)]),
        };
        s.status
            .set_text_content(Some(&tf(Key::Fetched, &[&got.frames.len(), &got.bytes.div_ceil(1024), &missing_text])));
        draw_spectrogram(&s.spectrogram, &samples, &recording.car_id);
        draw_waveform(&s.waveform, &samples, &recording.car_id);
        let wav_bytes = wav::encode(&samples);
        let start_iso = js_sys::Date::new(&JsValue::from_f64(recording.start_ms() as f64)).to_iso_string();
        let name = wav::file_name(&recording.car_id, &start_iso.as_string().unwrap_or_default(), missing.len());
        let wav_url = blob_url(&wav_bytes, "audio/wav");
        if let Some(url) = &wav_url {
            s.download.set_href(url);
            s.download.set_download(&name);
        }
        let duration_ms = samples.len() as f64 / 16.0;
        s.position.set_max(&format!("{duration_ms:.0}"));
        s.position.set_value("0");
        s.position_text.set_text_content(Some(&format!("{} / {}", clock(0.0), clock(duration_ms))));
        let buffer = s.player.as_ref().and_then(|p| {
            let floats: Vec<f32> = samples.iter().map(|&x| f32::from(x) / 32768.0).collect();
            let b = p.context.create_buffer(1, floats.len().max(1) as u32, 16_000.0).ok()?;
            b.copy_to_channel(&floats, 0).ok()?;
            Some(b)
        });
        if let Some(p) = s.player.as_mut() {
            p.from_s = 0.0;
        }
        s.play.set_disabled(buffer.is_none());
        s.play.set_text_content(Some(t(Key::Play)));
        s.selected = Some(Selected { recording, samples, buffer, wav_url });
    }

    fn toggle_play(&self) {
        let mut s = self.0.borrow_mut();
        let playing = s.player.as_ref().is_some_and(|p| p.playing);
        if playing {
            let at = position_s(&s);
            stop_source(&mut s);
            if let Some(p) = s.player.as_mut() {
                p.from_s = at;
            }
            s.play.set_text_content(Some(t(Key::Play)));
            return;
        }
        let from = s.player.as_ref().map_or(0.0, |p| p.from_s);
        drop(s);
        self.start_at(from);
    }

    fn seek(&self) {
        let s = self.0.borrow();
        let to = s.position.value().parse::<f64>().unwrap_or(0.0) / 1000.0;
        let playing = s.player.as_ref().is_some_and(|p| p.playing);
        drop(s);
        if playing {
            self.start_at(to);
        } else if let Some(p) = self.0.borrow_mut().player.as_mut() {
            p.from_s = to;
        }
    }

    /// Plays the whole recording (one buffer: no gap or click between frames) from `from_s`.
    fn start_at(&self, from_s: f64) {
        let mut s = self.0.borrow_mut();
        stop_source(&mut s);
        let Some(buffer) = s.selected.as_ref().and_then(|sel| sel.buffer.clone()) else { return };
        let Some(p) = s.player.as_mut() else { return };
        let _ = p.context.resume();
        let Ok(source) = p.context.create_buffer_source() else { return };
        source.set_buffer(Some(&buffer));
        if source.connect_with_audio_node(&p.context.destination()).is_err() {
            return;
        }
        let from_s = from_s.clamp(0.0, buffer.duration());
        if source.start_with_when_and_grain_offset(0.0, from_s).is_err() {
            return;
        }
        p.source = Some(source);
        p.from_s = from_s;
        p.started_at = p.context.current_time();
        p.playing = true;
        s.play.set_text_content(Some(t(Key::PausePlayback)));
        drop(s);
        self.follow();
    }

    /// Moves the position slider while playing; back to the start at the end.
    fn follow(&self) {
        let me = self.clone();
        wasm_bindgen_futures::spawn_local(async move {
            gloo_timers::future::TimeoutFuture::new(100).await;
            let mut s = me.0.borrow_mut();
            if !s.player.as_ref().is_some_and(|p| p.playing) {
                return;
            }
            let total = s.selected.as_ref().and_then(|sel| sel.buffer.as_ref()).map_or(0.0, AudioBuffer::duration);
            let at = position_s(&s);
            if at >= total {
                stop_source(&mut s);
                if let Some(p) = s.player.as_mut() {
                    p.from_s = 0.0;
                }
                s.play.set_text_content(Some(t(Key::Play)));
                s.position.set_value("0");
                s.position_text.set_text_content(Some(&format!("{} / {}", clock(0.0), clock(total * 1000.0))));
                return;
            }
            s.position.set_value(&format!("{:.0}", at * 1000.0));
            s.position_text.set_text_content(Some(&format!("{} / {}", clock(at * 1000.0), clock(total * 1000.0))));
            drop(s);
            me.follow();
        });
    }

    /// The samples of the open recording (what Play plays and the WAV holds).
    pub fn selected_samples(&self) -> Option<usize> {
        self.0.borrow().selected.as_ref().map(|s| s.samples.len())
    }

    /// The open recording's segment.
    pub fn selected_segment(&self) -> Option<String> {
        self.0.borrow().selected.as_ref().map(|s| s.recording.segment_id.clone())
    }
}

fn position_s(s: &ViewState) -> f64 {
    match &s.player {
        Some(p) if p.playing => p.from_s + (p.context.current_time() - p.started_at),
        Some(p) => p.from_s,
        None => 0.0,
    }
}

fn stop_source(s: &mut ViewState) {
    if let Some(p) = s.player.as_mut() {
        if let Some(src) = p.source.take() {
            let scheduled: &web_sys::AudioScheduledSourceNode = src.as_ref();
            let _ = scheduled.stop();
            let _ = src.disconnect();
        }
        p.playing = false;
    }
}

/// One recording's row: car (this device marked), start, length, frames, state, where it is in Kafka, Listen.
fn row(doc: &Document, list: &Element, r: &Recording, state: State, own: bool) -> Result<(), JsValue> {
    let li = doc.create_element("li")?;
    li.set_attribute("data-segment", &r.segment_id)?;
    let when = js_sys::Date::new(&JsValue::from_f64(r.start_ms() as f64));
    let time = when.to_locale_time_string("default").as_string().unwrap_or_default();
    let car = if own { format!("{} ({})", r.car_id, t(Key::ThisDevice)) } else { r.car_id.clone() };
    let state_text = match state {
        State::Recording => t(Key::StateRecording).to_owned(),
        State::Complete => t(Key::StateComplete).to_owned(),
        State::Missing(1) => t(Key::StateMissingOne).to_owned(),
        State::Missing(n) => tf(Key::StateMissing, &[&n]),
    };
    let (partition, first, last) = r.kafka().unwrap_or_default();
    let label = doc.create_element("span")?;
    label.set_text_content(Some(&tf(
        Key::RecordingRow,
        &[
            &car,
            &time,
            &format!("{:.1} s", r.duration_ms() as f64 / 1000.0),
            &r.frames(),
            &state_text,
            &partition,
            &first,
            &last,
        ],
    )));
    li.set_attribute(
        "data-state",
        match state {
            State::Recording => "recording",
            State::Complete => "complete",
            State::Missing(_) => "missing",
        },
    )?;
    li.set_attribute("data-duration-ms", &r.duration_ms().to_string())?;
    li.append_child(&label)?;
    let button = doc.create_element("button")?;
    button.set_attribute("type", "button")?;
    button.set_attribute("data-segment", &r.segment_id)?;
    button.set_attribute("aria-label", &tf(Key::ListenTo, &[&r.car_id, &time]))?;
    button.set_text_content(Some(t(Key::Listen)));
    li.append_child(&button)?;
    for result in &r.results {
        let p = doc.create_element("pre")?;
        p.set_text_content(Some(&tf(Key::Result, &[result])));
        li.append_child(&p)?;
    }
    list.append_child(&li)?;
    Ok(())
}

fn context_2d(canvas: &HtmlCanvasElement) -> Option<CanvasRenderingContext2d> {
    canvas.get_context("2d").ok()??.dyn_into().ok()
}

/// The spectrogram, with its axes: kHz on the left, seconds along the bottom.
fn draw_spectrogram(canvas: &HtmlCanvasElement, samples: &[i16], car: &str) {
    let spec = Spectrogram::of(samples);
    // More columns than fit are merged (each bin's maximum), so that short events stay visible.
    let merge = spec.columns.len().div_ceil(MAX_COLUMNS).max(1);
    let columns: Vec<Vec<f32>> = spec
        .columns
        .chunks(merge)
        .map(|group| (0..BINS).map(|b| group.iter().map(|c| c[b]).fold(f32::MIN, f32::max)).collect())
        .collect();
    let width = columns.len().max(1) as u32;
    canvas.set_width(LEFT + width);
    canvas.set_height(BINS as u32 + BOTTOM);
    let _ = canvas.set_attribute("aria-label", &tf(Key::SpectrogramLabel, &[&car]));
    let _ = canvas.set_attribute("data-columns", &width.to_string());
    let Some(ctx) = context_2d(canvas) else { return };
    let mut pixels = vec![0u8; width as usize * BINS * 4];
    for (x, column) in columns.iter().enumerate() {
        for (b, &db) in column.iter().enumerate() {
            let y = BINS - 1 - b;
            let i = (y * width as usize + x) * 4;
            let [r, g, bl] = colour(db);
            pixels[i..i + 4].copy_from_slice(&[r, g, bl, 255]);
        }
    }
    if let Ok(image) =
        web_sys::ImageData::new_with_u8_clamped_array_and_sh(wasm_bindgen::Clamped(&pixels), width, BINS as u32)
    {
        let _ = ctx.put_image_data(&image, f64::from(LEFT), 0.0);
    }
    ctx.set_fill_style_str("#888");
    ctx.set_font("11px sans-serif");
    for khz in [0, 2, 4, 6, 8] {
        let y = (BINS - 1) as f64 - f64::from(khz) * 1000.0 / super::spectrogram::HZ_PER_BIN;
        let _ = ctx.fill_text(&format!("{khz} {}", t(Key::AxisKhz)), 2.0, (y + 4.0).clamp(10.0, BINS as f64));
    }
    let seconds = samples.len() as f64 / 16_000.0;
    let px_per_s =
        f64::from(width) / seconds.max(1e-9) * (spec.columns.len() * HOP) as f64 / samples.len().max(1) as f64;
    let step = if seconds > 60.0 {
        10.0
    } else if seconds > 10.0 {
        2.0
    } else {
        1.0
    };
    let mut s = 0.0;
    while s <= seconds {
        let _ = ctx.fill_text(
            &format!("{s:.0} {}", t(Key::AxisSeconds)),
            f64::from(LEFT) + s * px_per_s,
            (BINS as u32 + BOTTOM - 4) as f64,
        );
        s += step;
    }
}

/// The waveform: per pixel column, the lowest and highest sample.
fn draw_waveform(canvas: &HtmlCanvasElement, samples: &[i16], car: &str) {
    let width = canvas.width().max(1);
    let height = f64::from(canvas.height().max(1));
    let _ = canvas.set_attribute("aria-label", &tf(Key::WaveformLabel, &[&car]));
    let Some(ctx) = context_2d(canvas) else { return };
    ctx.clear_rect(0.0, 0.0, f64::from(width), height);
    ctx.set_fill_style_str("#2e7d32");
    for (x, (lo, hi)) in waveform(samples, width as usize).into_iter().enumerate() {
        let top = (1.0 - f64::from(hi)) / 2.0 * height;
        let bottom = (1.0 - f64::from(lo)) / 2.0 * height;
        ctx.fill_rect(x as f64, top, 1.0, (bottom - top).max(1.0));
    }
}

/// A `blob:` URL of `bytes` (revoked when another recording is opened).
fn blob_url(bytes: &[u8], mime: &str) -> Option<String> {
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(bytes));
    let options = web_sys::BlobPropertyBag::new();
    options.set_type(mime);
    let blob = web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &options).ok()?;
    web_sys::Url::create_object_url_with_blob(&blob).ok()
}

/// The microphone's live spectrogram while recording, scrolling from right to left under the meter.
pub struct LiveSpectrogram {
    canvas: HtmlCanvasElement,
    /// The last samples not yet covered by a whole window (and the overlap).
    tail: Vec<i16>,
    stft: Stft,
}

impl LiveSpectrogram {
    /// Draws into `canvas` (`BINS` pixels high).
    pub fn new(canvas: HtmlCanvasElement) -> Self {
        canvas.set_height(BINS as u32);
        if let Some(ctx) = context_2d(&canvas) {
            ctx.set_fill_style_str("#000014");
            ctx.fill_rect(0.0, 0.0, f64::from(canvas.width()), BINS as f64);
        }
        Self { canvas, tail: Vec::new(), stft: Stft::default() }
    }

    /// The next 16 kHz samples from the pipeline.
    pub fn push(&mut self, samples: &[i16]) {
        self.tail.extend_from_slice(samples);
        let columns = self.stft.columns(&self.tail);
        let n = columns.len();
        if n == 0 {
            return;
        }
        self.tail.drain(..n * HOP);
        let Some(ctx) = context_2d(&self.canvas) else { return };
        let width = self.canvas.width();
        // Scroll left by the new columns, then draw them at the right edge.
        let _ = ctx.draw_image_with_html_canvas_element(&self.canvas, -(n as f64), 0.0);
        let mut pixels = vec![0u8; n * BINS * 4];
        for (x, column) in columns.iter().enumerate() {
            for (b, &db) in column.iter().enumerate() {
                let i = ((BINS - 1 - b) * n + x) * 4;
                let [r, g, bl] = colour(db);
                pixels[i..i + 4].copy_from_slice(&[r, g, bl, 255]);
            }
        }
        if let Ok(image) =
            web_sys::ImageData::new_with_u8_clamped_array_and_sh(wasm_bindgen::Clamped(&pixels), n as u32, BINS as u32)
        {
            let _ = ctx.put_image_data(&image, f64::from(width) - n as f64, 0.0);
        }
    }
}
