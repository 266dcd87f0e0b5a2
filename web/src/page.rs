//! The page: the form, Start/Stop, the level meter and counters, the recordings waiting on the device, and the
//! wiring from capture through the outbox to the uplink.
//!
//! ```text
//!  Start click ─► lock + outbox row ─► Capture::start ─► block ─► Pipeline::push ─► frames ─► Writer (outbox) ─► Uplink
//!                                                          └─► level meter, elapsed time, storage level
//!  Uplink events ─► link state, counters, errors     Stop ─► Pipeline::finish ─► Writer::stop ─► Uplink::stop ─► Done
//!  page load ─► Recovery: earlier pages' recordings in the outbox ─► uploaded, listed under "Waiting to upload"
//! ```
//!
//! # One state, one queue
//!
//! The page's state is one [`State`], owned by one task ([`run`]). Everything that happens to the page is a
//! [`Msg`] sent into that task's queue: a click, an audio block, what the uplink, the writer and the recovery
//! report, the result of an asynchronous step. The task takes them one at a time: [`update`] changes the state,
//! [`render`] writes what changed to the DOM. Nothing else holds the state, so nothing borrows it; and since the
//! uplink, writer and recovery report into the queue, a report never arrives inside the call that caused it.
//!
//! Metadata fields are remembered in localStorage. The relay is the page's own origin (`/ws/record`, `/ws/feed`),
//! or `?relay=ws://host:port` for development; `?outboxCapKb=N` caps the storage waiting audio may use.

use std::cell::RefCell;
use std::rc::Rc;

use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures_util::StreamExt as _;
use gloo_events::EventListener;
use soundline_shared::control::LinkState;
use soundline_shared::recording::{DeviceInfo, LocationInfo, Recording};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{
    AudioContext, Document, Element, HtmlButtonElement, HtmlInputElement, HtmlSelectElement, HtmlTextAreaElement,
    MediaDeviceInfo,
};

use crate::awake::Awake;
use crate::by_id;
use crate::capture::{Capture, describe_error};
use crate::i18n::{self, Key, Lang, t, tf};
use crate::outbox::lock::{self, Held};
use crate::outbox::quota::{self, Level};
use crate::outbox::writer::{Saved, Writer};
use crate::outbox::{self as store, Outbox, Stored};
use crate::pipeline::{Frame, Pipeline, peak_dbfs};
use crate::recordings::subscription::{FeedPanel, Since};
use crate::recordings::view::{LiveSpectrogram, View};
use crate::uplink::recover::{Recovery, Report, Row, RowState};
use crate::uplink::socket::{Event, Uplink};
use crate::uplink::{Flow, WINDOW_BYTES};

/// Default frame length.
const FRAME_MS: u32 = 200;
const FIELDS: [&str; 7] = ["carId", "railType", "unitId", "sty", "notes", "frameMs", "token"];
/// How often the meter and counters are redrawn while recording.
const METER_MS: f64 = 100.0;
/// How often storage is looked at while recording.
const STORAGE_CHECK_MS: f64 = 1_000.0;

/// Everything that happens to the page.
enum Msg {
    /// The Record/Stop button; when it starts a recording, the AudioContext made inside the click (autoplay
    /// policies allow one only there).
    Toggle(Option<Result<AudioContext, JsValue>>),
    /// A recording's capture, pipeline, writer and uplink are running.
    Started(Box<Active>, Option<String>),
    /// A recording could not start: why.
    StartFailed(String),
    /// A block of samples from the microphone.
    Block(Vec<f32>),
    /// The browser paused (true) or resumed capture.
    Paused(bool),
    /// How full the device's storage is.
    Storage(Level),
    /// Whether the browser keeps the outbox when it is short of space.
    Persisted(bool),
    /// What the live recording's writer saved.
    Saved(Saved),
    /// What the live recording's uplink reports.
    Uplink(Event),
    /// The outbox opened, or why not.
    Outbox(Result<Outbox, String>),
    /// What the recovery of earlier pages' recordings reports.
    Recovery(Report),
    /// "All devices" ticked or not.
    FeedAll(bool),
    /// How far back the list starts.
    Since(Since),
    /// A new access token.
    Token(String),
    /// Another language.
    Lang(Lang),
    /// The page will not open offline: why.
    NoOffline(String),
}

/// Where the page's messages go; cheap to clone.
#[derive(Clone)]
struct Tx(UnboundedSender<Msg>);

impl Tx {
    fn send(&self, msg: Msg) {
        // Fails only when the page's task is gone, and then there is nothing to tell.
        let _ = self.0.unbounded_send(msg);
    }
}

/// The elements the page updates (DOM handles).
struct Ui {
    record: HtmlButtonElement,
    mic: HtmlSelectElement,
    processing: HtmlInputElement,
    level: Element,
    level_bar: web_sys::HtmlElement,
    elapsed: Element,
    link: Element,
    sent: Element,
    acked: Element,
    pending: Element,
    clipped: Element,
    saved: Element,
    storage: Element,
    outbox: Element,
    outbox_list: Element,
    error: Element,
    status: Element,
    live: web_sys::HtmlCanvasElement,
}

/// What the page shows: [`update`] sets it, [`render`] writes what differs from what it last wrote.
#[derive(Clone, PartialEq, Default)]
struct Shown {
    button: String,
    button_on: bool,
    button_disabled: bool,
    level: String,
    level_width: String,
    elapsed: String,
    link: String,
    sent: String,
    acked: String,
    pending: String,
    clipped: String,
    saved: String,
    storage: String,
    storage_warn: bool,
    error: String,
    status: String,
    /// The "Waiting to upload" line before there are rows (looking, or no outbox).
    outbox: String,
    /// The "Waiting to upload" rows, once the outbox has been looked at.
    waiting: Option<Vec<Row>>,
}

struct Active {
    capture: Capture,
    pipeline: Pipeline,
    uplink: Rc<RefCell<Uplink>>,
    writer: Rc<RefCell<Writer>>,
    lock: Option<Held>,
    frames: Vec<Frame>,
    sent: u64,
    samples_in: u64,
    rate: u32,
    frame_ms: u32,
    last_ui_ms: f64,
    last_storage_ms: f64,
    /// The microphone's spectrogram under the meter.
    live: LiveSpectrogram,
    /// When the browser paused capture (the AudioContext left "running"), if it is paused.
    paused_at: Option<f64>,
}

impl Active {
    /// The frames the pipeline just made: onto the live spectrogram, encoded for the wire, to the writer (which
    /// saves them in the outbox, then hands them to the uplink); counted as recorded.
    fn save_frames(&mut self) {
        let mut writer = self.writer.borrow_mut();
        for frame in &self.frames {
            self.live.push(&frame.samples);
            let encoded = soundline_shared::frame::encode_to_vec(frame.seq, frame.capture_ts_ms, &frame.samples);
            writer.push(frame.seq, (frame.samples.len() / 16) as u32, encoded);
            self.sent += 1;
        }
    }

    /// Recorded time, as the meter shows it.
    fn elapsed(&self) -> String {
        let seconds = self.samples_in as f64 / f64::from(self.rate);
        format!("{}:{:04.1}", (seconds / 60.0) as u64, seconds % 60.0)
    }
}

/// A stopped recording, kept alive until every frame is acked.
struct Finishing {
    _uplink: Rc<RefCell<Uplink>>,
    _writer: Rc<RefCell<Writer>>,
    lock: Option<Held>,
    /// Frames still waiting for their ack.
    pending: u64,
}

/// Where the recorder is.
enum Phase {
    Idle,
    /// The microphone and the outbox row are being set up for this segment.
    Starting(String),
    Recording(Box<Active>),
}

/// The page's state: owned by [`run`], changed by [`update`] only.
struct State {
    ui: Ui,
    doc: Document,
    base: String,
    tx: Tx,
    feed: FeedPanel,
    /// Shared with the recordings list, which groups by it.
    own_car: Rc<RefCell<String>>,
    /// Shared with the feed and the recovery, which connect with it.
    token: Rc<RefCell<String>>,
    phase: Phase,
    finishing: Option<Finishing>,
    /// The device's outbox (`None` until it opens, or if this browser has none).
    outbox: Option<Outbox>,
    recovery: Option<Rc<RefCell<Recovery>>>,
    /// Audio of earlier recordings waiting in the outbox, bytes.
    waiting_bytes: u64,
    /// `?outboxCapKb=N`: the most the outbox may hold, bytes.
    cap: Option<u64>,
    /// Whether persistent storage was asked for (once per page).
    asked_persist: bool,
    /// The screen wake lock, held while recording or uploading.
    awake: Awake,
    /// An earlier page's recording is uploading.
    uploading_earlier: bool,
    shown: Shown,
    rendered: Shown,
    /// The page's own listeners (the button, the feed's controls, the language, the microphones), removed with
    /// the state.
    _listeners: Vec<EventListener>,
}

fn relay_base() -> Result<String, JsValue> {
    let location = web_sys::window().ok_or("no window")?.location();
    let search = location.search()?;
    if let Some(relay) = search.trim_start_matches('?').split('&').find_map(|kv| kv.strip_prefix("relay=")) {
        return Ok(js_sys::decode_uri_component(relay)?.as_string().unwrap_or_default());
    }
    let scheme = if location.protocol()? == "https:" { "wss" } else { "ws" };
    Ok(format!("{scheme}://{}", location.host()?))
}

/// A query parameter of the page's URL.
fn query(name: &str) -> Option<String> {
    let search = web_sys::window()?.location().search().ok()?;
    search.trim_start_matches('?').split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=').map(str::to_owned))
}

fn field_value(doc: &Document, id: &str) -> String {
    if let Ok(i) = by_id::<HtmlInputElement>(doc, id) {
        return i.value();
    }
    if let Ok(s) = by_id::<HtmlSelectElement>(doc, id) {
        return s.value();
    }
    by_id::<HtmlTextAreaElement>(doc, id).map(|t| t.value()).unwrap_or_default()
}

fn set_field(doc: &Document, id: &str, value: &str) {
    if let Ok(s) = by_id::<HtmlSelectElement>(doc, id) {
        s.set_value(value);
    } else if let Ok(i) = by_id::<HtmlInputElement>(doc, id) {
        i.set_value(value);
    } else if let Ok(t) = by_id::<HtmlTextAreaElement>(doc, id) {
        t.set_value(value);
    }
}

/// Builds the page and starts its task; called once the module loads.
pub fn init() -> Result<(), JsValue> {
    let doc = web_sys::window().and_then(|w| w.document()).ok_or("no document")?;
    let (sender, queue) = futures_channel::mpsc::unbounded();
    let tx = Tx(sender);
    let mut listeners = Vec::new();
    listeners.push(choose_language(&doc, &tx)?);
    let ui = Ui {
        record: by_id(&doc, "record")?,
        mic: by_id(&doc, "mic")?,
        processing: by_id(&doc, "processing")?,
        level: by_id(&doc, "level")?,
        level_bar: by_id(&doc, "level-bar")?,
        elapsed: by_id(&doc, "elapsed")?,
        link: by_id(&doc, "link")?,
        sent: by_id(&doc, "sent")?,
        acked: by_id(&doc, "acked")?,
        pending: by_id(&doc, "pending")?,
        clipped: by_id(&doc, "clipped")?,
        saved: by_id(&doc, "saved")?,
        storage: by_id(&doc, "storage")?,
        outbox: by_id(&doc, "outbox")?,
        outbox_list: by_id(&doc, "outbox-list")?,
        error: by_id(&doc, "error")?,
        status: by_id(&doc, "status")?,
        live: by_id(&doc, "live-spectrogram")?,
    };
    // Texts the panels write themselves start in the page's language.
    if let Ok(p) = by_id::<Element>(&doc, "play") {
        p.set_text_content(Some(t(Key::Play)));
    }
    if let Ok(p) = by_id::<Element>(&doc, "feed-status") {
        p.set_text_content(Some(t(Key::FeedConnecting)));
    }
    if let Some(store) = storage() {
        for id in FIELDS {
            if let Ok(Some(v)) = store.get_item(&format!("soundline.{id}")) {
                set_field(&doc, id, &v);
            }
        }
    }
    let own_car = Rc::new(RefCell::new(field_value(&doc, "carId")));
    let token = Rc::new(RefCell::new(field_value(&doc, "token")));
    let base = relay_base()?;
    let feed_all: HtmlInputElement = by_id(&doc, "feed-all")?;
    let car = own_car.borrow().clone();
    let filter = (!feed_all.checked() && !car.is_empty()).then_some(car);
    let view = View::new(&doc, format!("{base}/ws/feed"), Rc::clone(&token), Rc::clone(&own_car))?;
    view.reset(filter.is_none());
    let feed = crate::recordings::subscription::start(
        format!("{base}/ws/feed"),
        Rc::clone(&token),
        view,
        by_id(&doc, "feed-status")?,
        filter,
    );

    // Each control says what happened; the page's task decides what it means.
    let to = |msg: fn(&Element) -> Msg| {
        let tx = tx.clone();
        move |e: &web_sys::Event| {
            if let Some(el) = e.target().and_then(|t| t.dyn_into::<Element>().ok()) {
                tx.send(msg(&el));
            }
        }
    };
    listeners.push(EventListener::new(&feed_all, "change", to(|el| Msg::FeedAll(is_checked(el)))));
    listeners.push(EventListener::new(
        &by_id::<web_sys::EventTarget>(&doc, "feed-since")?,
        "change",
        to(|el| Msg::Since(if value_of(el) == "today" { Since::Today } else { Since::Hour })),
    ));
    listeners.push(EventListener::new(
        &by_id::<web_sys::EventTarget>(&doc, "token")?,
        "change",
        to(|el| Msg::Token(value_of(el))),
    ));
    {
        // The AudioContext must come to life inside the click itself, before anything is awaited. The button
        // is "on" while recording: a click then stops, and needs no context.
        let (tx, button) = (tx.clone(), ui.record.clone());
        listeners.push(EventListener::new(&ui.record, "click", move |_| {
            let starting = button.class_name() != "on";
            tx.send(Msg::Toggle(starting.then(Capture::context_in_gesture)));
        }));
    }
    wasm_bindgen_futures::spawn_local(list_microphones(ui.mic.clone()));
    if let Ok(devices) = web_sys::window().ok_or("no window")?.navigator().media_devices() {
        let mic = ui.mic.clone();
        listeners.push(EventListener::new(&devices, "devicechange", move |_| {
            wasm_bindgen_futures::spawn_local(list_microphones(mic.clone()));
        }));
    }
    wasm_bindgen_futures::spawn_local(register_service_worker(tx.clone()));
    wasm_bindgen_futures::spawn_local(open_outbox(tx.clone()));

    let shown = Shown {
        button: t(Key::StartRecording).to_owned(),
        level: "-∞ dBFS".into(),
        level_width: "0%".into(),
        elapsed: "0:00.0".into(),
        link: t(Key::LinkIdle).to_owned(),
        sent: "0".into(),
        acked: "0".into(),
        pending: "0".into(),
        clipped: "0".into(),
        saved: "0".into(),
        status: tf(Key::Ready, &[&base]),
        outbox: t(Key::LookingForWaiting).to_owned(),
        ..Shown::default()
    };
    let cap = query("outboxCapKb").and_then(|kb| kb.parse::<u64>().ok()).map(|kb| kb * 1024);
    let mut state = State {
        awake: Awake::new(by_id(&doc, "awake")?),
        ui,
        doc,
        base,
        tx,
        feed,
        own_car,
        token,
        phase: Phase::Idle,
        finishing: None,
        outbox: None,
        recovery: None,
        waiting_bytes: 0,
        cap,
        asked_persist: false,
        uploading_earlier: false,
        shown,
        rendered: Shown::default(),
        _listeners: listeners,
    };
    render(&mut state);
    wasm_bindgen_futures::spawn_local(run(state, queue));
    Ok(())
}

fn is_checked(el: &Element) -> bool {
    el.dyn_ref::<HtmlInputElement>().is_some_and(HtmlInputElement::checked)
}

fn value_of(el: &Element) -> String {
    el.dyn_ref::<HtmlInputElement>()
        .map(HtmlInputElement::value)
        .or_else(|| el.dyn_ref::<HtmlSelectElement>().map(HtmlSelectElement::value))
        .unwrap_or_default()
}

/// The page's task: every message, in order, into the state; then the page shows what changed.
async fn run(mut state: State, mut queue: UnboundedReceiver<Msg>) {
    while let Some(msg) = queue.next().await {
        update(&mut state, msg);
        render(&mut state);
    }
}

fn update(state: &mut State, msg: Msg) {
    match msg {
        Msg::Toggle(context) => match (&state.phase, &state.finishing) {
            (Phase::Recording(_), _) => stop(state),
            (Phase::Idle, None) => start(state, context),
            // A click while starting or finishing (the button is disabled then): nothing to do.
            _ => {
                if let Some(Ok(c)) = context {
                    let _ = c.close();
                }
            }
        },
        Msg::Started(active, not_kept) => {
            let kept = not_kept.is_none() && state.outbox.is_some();
            if let Some(line) = not_kept {
                state.shown.storage = line;
            }
            let rate = active.rate;
            if kept && !state.asked_persist {
                state.asked_persist = true;
                let tx = state.tx.clone();
                wasm_bindgen_futures::spawn_local(async move {
                    tx.send(Msg::Persisted(quota::persist().await == Some(true)));
                });
            }
            state.phase = Phase::Recording(active);
            state.shown.status = tf(Key::RecordingAt, &[&rate]);
            keep_awake(state);
        }
        Msg::StartFailed(message) => {
            state.phase = Phase::Idle;
            state.shown.error = message;
        }
        Msg::Block(block) => on_block(state, &block),
        Msg::Paused(paused) => capture_paused(state, paused),
        Msg::Storage(level) => show_storage(state, level),
        Msg::Persisted(kept) => {
            state.shown.storage = t(if kept { Key::Persisted } else { Key::NotPersisted }).to_owned();
        }
        Msg::Saved(Saved::Saved { frames, .. }) => state.shown.saved = frames.to_string(),
        Msg::Saved(Saved::Failed { message, quota, ms }) => {
            state.shown.storage_warn = true;
            state.shown.storage = tf(Key::NotSaved, &[&format!("{:.1}", f64::from(ms) / 1000.0), &message]);
            if quota {
                stop(state);
            }
        }
        Msg::Uplink(event) => on_uplink(state, event),
        Msg::Outbox(Ok(outbox)) => {
            let tx = state.tx.clone();
            let on_report = Rc::new(move |report: Report| tx.send(Msg::Recovery(report)));
            let recovery = Recovery::start(
                outbox.clone(),
                format!("{}/ws/record", state.base),
                Rc::clone(&state.token),
                on_report,
            );
            match &state.phase {
                Phase::Starting(segment_id) => recovery.borrow_mut().own(segment_id),
                Phase::Recording(active) => recovery.borrow_mut().own(active.uplink.borrow().segment_id()),
                Phase::Idle => {}
            }
            state.outbox = Some(outbox);
            state.recovery = Some(recovery);
        }
        Msg::Outbox(Err(why)) => state.shown.outbox = tf(Key::NoOutbox, &[&why]),
        Msg::Recovery(Report::Rows(rows)) => {
            state.waiting_bytes =
                rows.iter().map(|r| r.ms * 32 + r.frames * soundline_shared::frame::HEADER_LEN as u64).sum();
            state.uploading_earlier = rows.iter().any(|r| matches!(r.state, RowState::Uploading { .. }));
            state.shown.waiting = Some(rows);
            keep_awake(state);
        }
        Msg::Recovery(Report::Problem(p)) => state.shown.storage = p,
        Msg::FeedAll(all) => {
            let car = state.own_car.borrow().clone();
            state.feed.set_filter((!all && !car.is_empty()).then_some(car));
        }
        Msg::Since(since) => state.feed.set_since(since),
        Msg::Token(token) => {
            if let Some(store) = storage() {
                let _ = store.set_item("soundline.token", &token);
            }
            *state.token.borrow_mut() = token;
            state.feed.token_changed();
        }
        Msg::Lang(lang) => {
            i18n::set(lang);
            i18n::apply(&state.doc);
            if let Some(s) = storage() {
                let _ = s.set_item("soundline.lang", lang.tag());
            }
            // `render` writes the button in the new language at once; other lines change as they are next written.
        }
        Msg::NoOffline(why) => {
            let line = format!("{} {}", state.shown.status, tf(Key::NoOffline, &[&why]));
            state.shown.status = line;
        }
    }
}

/// Holds the screen on while anything records or uploads.
fn keep_awake(state: &State) {
    let busy = !matches!(state.phase, Phase::Idle) || state.finishing.is_some() || state.uploading_earlier;
    state.awake.set(busy);
}

/// What the Record button says in the state the page is in.
fn button_text(state: &State) -> String {
    match (&state.phase, &state.finishing) {
        (Phase::Recording(_), _) => t(Key::StopRecording).to_owned(),
        (Phase::Starting(_), _) => t(Key::Starting).to_owned(),
        (Phase::Idle, Some(f)) => tf(Key::Finishing, &[&f.pending]),
        (Phase::Idle, None) => t(Key::StartRecording).to_owned(),
    }
}

/// Writes to the page what [`update`] changed since the last time.
fn render(state: &mut State) {
    state.shown.button = button_text(state);
    state.shown.button_on = matches!(state.phase, Phase::Recording(_));
    state.shown.button_disabled =
        !matches!(state.phase, Phase::Recording(_) | Phase::Idle) || state.finishing.is_some();
    let (shown, old, ui) = (&state.shown, &state.rendered, &state.ui);
    if *shown == *old {
        return;
    }
    let text = |el: &Element, new: &String, old: &String| {
        if new != old {
            el.set_text_content(Some(new));
        }
    };
    text(&ui.record, &shown.button, &old.button);
    if shown.button_on != old.button_on || old.button.is_empty() {
        ui.record.set_class_name(if shown.button_on { "on" } else { "" });
    }
    if shown.button_disabled != old.button_disabled || old.button.is_empty() {
        ui.record.set_disabled(shown.button_disabled);
    }
    text(&ui.level, &shown.level, &old.level);
    if shown.level_width != old.level_width {
        // Through the CSSOM: a `style` attribute would be an inline style, which the page's CSP forbids.
        let _ = ui.level_bar.style().set_property("width", &shown.level_width);
    }
    text(&ui.elapsed, &shown.elapsed, &old.elapsed);
    text(&ui.link, &shown.link, &old.link);
    text(&ui.sent, &shown.sent, &old.sent);
    text(&ui.acked, &shown.acked, &old.acked);
    text(&ui.pending, &shown.pending, &old.pending);
    text(&ui.clipped, &shown.clipped, &old.clipped);
    text(&ui.saved, &shown.saved, &old.saved);
    text(&ui.storage, &shown.storage, &old.storage);
    if shown.storage_warn != old.storage_warn {
        ui.storage.set_class_name(if shown.storage_warn { "warn" } else { "" });
    }
    text(&ui.error, &shown.error, &old.error);
    text(&ui.status, &shown.status, &old.status);
    text(&ui.outbox, &shown.outbox, &old.outbox);
    if shown.waiting != old.waiting
        && let Some(rows) = &shown.waiting
    {
        show_waiting(ui, rows);
    }
    state.rendered = state.shown.clone();
}

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok()?
}

/// Registers `sw.js`, which makes the page open with no network. A browser that refuses (no service workers, a
/// private window) still records; the page says it will not open offline.
async fn register_service_worker(tx: Tx) {
    let Some(window) = web_sys::window() else { return };
    let container = window.navigator().service_worker();
    let offline_ready = container.controller().is_some();
    // Offline, the update check fails: the worker that served this page stays, which is what is wanted.
    if let Err(e) = wasm_bindgen_futures::JsFuture::from(container.register("sw.js")).await
        && !offline_ready
    {
        let why = js_sys::Reflect::get(&e, &"message".into()).ok().and_then(|m| m.as_string()).unwrap_or_default();
        tx.send(Msg::NoOffline(why));
    }
}

/// The page's language: the one chosen earlier (localStorage), else `navigator.language`; the selector switches
/// it (static labels at once, everything else as it is next written). Returns the selector's listener.
fn choose_language(doc: &Document, tx: &Tx) -> Result<EventListener, JsValue> {
    let stored = storage().and_then(|s| s.get_item("soundline.lang").ok().flatten());
    let tag = stored.or_else(|| web_sys::window().and_then(|w| w.navigator().language())).unwrap_or_default();
    i18n::set(Lang::from_tag(&tag));
    i18n::apply(doc);
    let select: HtmlSelectElement = by_id(doc, "lang")?;
    select.set_value(i18n::lang().tag());
    let (tx, field) = (tx.clone(), select.clone());
    Ok(EventListener::new(&select, "change", move |_| tx.send(Msg::Lang(Lang::from_tag(&field.value())))))
}

/// Opens the outbox; the page then starts uploading what earlier pages left in it.
async fn open_outbox(tx: Tx) {
    tx.send(Msg::Outbox(Outbox::open().await.map_err(|e| store::describe(&e))));
}

/// A click on Start: checks the form, then sets up the recording ([`starting`]) while the button says so.
fn start(state: &mut State, context: Option<Result<AudioContext, JsValue>>) {
    state.shown.error.clear();
    let recording = match recording_from_form(&state.doc) {
        Ok(r) => r,
        Err(message) => {
            if let Some(Ok(c)) = context {
                let _ = c.close();
            }
            state.shown.error = message;
            return;
        }
    };
    if let Some(store) = storage() {
        for id in FIELDS {
            let _ = store.set_item(&format!("soundline.{id}"), &field_value(&state.doc, id));
        }
    }
    *state.own_car.borrow_mut() = recording.device.car_id.clone();
    let all = by_id::<HtmlInputElement>(&state.doc, "feed-all").map(|b| b.checked()).unwrap_or(false);
    if !all {
        state.feed.set_filter(Some(recording.device.car_id.clone()));
    }
    let Some(Ok(context)) = context else {
        state.shown.error = t(Key::NoWebAudio).to_owned();
        return;
    };
    let url = match relay_base() {
        Ok(base) => format!("{base}/ws/record"),
        Err(e) => {
            let _ = context.close();
            state.shown.error = tf(Key::BadRelay, &[&format!("{e:?}")]);
            return;
        }
    };
    let frame_ms =
        by_id::<HtmlSelectElement>(&state.doc, "frameMs").ok().and_then(|s| s.value().parse().ok()).unwrap_or(FRAME_MS);
    let segment_id = recording.segment_id.clone();
    if let Some(r) = &state.recovery {
        r.borrow_mut().own(&segment_id);
    }
    state.phase = Phase::Starting(segment_id);
    let setup = Setup {
        tx: state.tx.clone(),
        context,
        recording,
        frame_ms,
        url,
        token: field_value(&state.doc, "token"),
        outbox: state.outbox.clone(),
        device: state.ui.mic.value(),
        processing: state.ui.processing.checked(),
        live: LiveSpectrogram::new(state.ui.live.clone()),
    };
    wasm_bindgen_futures::spawn_local(starting(setup));
}

/// What setting up a recording needs.
struct Setup {
    tx: Tx,
    context: AudioContext,
    recording: Recording,
    frame_ms: u32,
    url: String,
    token: String,
    outbox: Option<Outbox>,
    device: String,
    processing: bool,
    live: LiveSpectrogram,
}

/// The recording's lock and its row in the outbox first (no other tab may take it for an earlier page's, and its
/// frames are never in the outbox without the metadata to send them), then the microphone, the pipeline, the
/// uplink and the writer. Ends with [`Msg::Started`] or [`Msg::StartFailed`], having undone what it did.
async fn starting(setup: Setup) {
    let Setup { tx, context, recording, frame_ms, url, token, outbox, device, processing, live } = setup;
    let segment_id = recording.segment_id.clone();
    let lock = lock::try_lock(&segment_id).await.ok().flatten();
    let stored = Stored { recording: recording.clone(), frame_ms, started_ms: js_sys::Date::now() };
    let mut not_kept = None;
    let outbox = match outbox {
        Some(o) => match o.begin(&stored).await {
            Ok(()) => Some(o),
            Err(e) if store::is_quota(&e) => {
                let _ = context.close();
                if let Some(l) = lock {
                    l.release();
                }
                return tx.send(Msg::StartFailed(t(Key::FullBeforeStart).to_owned()));
            }
            Err(e) => {
                not_kept = Some(tf(Key::NotKept, &[&store::describe(&e)]));
                None
            }
        },
        None => None,
    };
    let blocks = tx.clone();
    let on_block = move |block: &[f32]| blocks.send(Msg::Block(block.to_vec()));
    let mut capture = match Capture::start(context.clone(), Some(&device), processing, on_block).await {
        Ok(c) => c,
        Err(e) => {
            let _ = context.close();
            forget_recording(outbox.as_ref(), &segment_id, lock).await;
            return tx.send(Msg::StartFailed(describe_error(&e)));
        }
    };
    let rate = capture.sample_rate();
    let pipeline = match Pipeline::new(rate, frame_ms, js_sys::Date::now()) {
        Ok(p) => p,
        Err(e) => {
            capture.stop();
            forget_recording(outbox.as_ref(), &segment_id, lock).await;
            return tx.send(Msg::StartFailed(tf(Key::UnsupportedRate, &[&e])));
        }
    };
    let paused = tx.clone();
    capture.on_running_change(move |running| paused.send(Msg::Paused(!running)));
    let events = tx.clone();
    let on_event = Rc::new(move |event| events.send(Msg::Uplink(event)));
    let uplink = Uplink::start(url, token, recording, frame_ms, Flow::new(WINDOW_BYTES), outbox.clone(), on_event);
    let saved = tx.clone();
    let writer = Writer::new(outbox, segment_id, Rc::clone(&uplink), Rc::new(move |s| saved.send(Msg::Saved(s))));
    let active = Active {
        capture,
        pipeline,
        uplink,
        writer,
        lock,
        frames: Vec::new(),
        sent: 0,
        samples_in: 0,
        rate,
        frame_ms,
        last_ui_ms: 0.0,
        last_storage_ms: 0.0,
        paused_at: None,
        live,
    };
    tx.send(Msg::Started(Box::new(active), not_kept));
}

fn on_block(state: &mut State, block: &[f32]) {
    let (waiting_bytes, cap, tx) = (state.waiting_bytes, state.cap, state.tx.clone());
    let Phase::Recording(active) = &mut state.phase else { return };
    active.samples_in += block.len() as u64;
    active.frames.clear();
    active.pipeline.push(block, &mut active.frames);
    active.save_frames();
    let now = js_sys::Date::now();
    if now - active.last_ui_ms >= METER_MS {
        active.last_ui_ms = now;
        let db = peak_dbfs(block);
        state.shown.level = if db.is_finite() { format!("{db:.1} dBFS") } else { "-∞ dBFS".into() };
        state.shown.level_width = format!("{:.0}%", ((db + 60.0) / 60.0 * 100.0).clamp(0.0, 100.0));
        state.shown.elapsed = active.elapsed();
        state.shown.sent = active.sent.to_string();
        state.shown.clipped = active.pipeline.clipped().to_string();
    }
    if now - active.last_storage_ms >= STORAGE_CHECK_MS {
        active.last_storage_ms = now;
        let own = active.uplink.borrow().pending() * store::frame_bytes(active.frame_ms);
        wasm_bindgen_futures::spawn_local(async move {
            let (usage, quota_bytes) = quota::estimate().await;
            tx.send(Msg::Storage(quota::level(own + waiting_bytes, usage, quota_bytes, cap, store::frame_bytes(1000))));
        });
    }
}

/// The browser paused (or resumed) capture: the recording marks the hole (the frames' timestamps skip it) and the
/// page says how long it was.
fn capture_paused(state: &mut State, paused: bool) {
    let Phase::Recording(active) = &mut state.phase else { return };
    let now = js_sys::Date::now();
    if paused {
        active.paused_at.get_or_insert(now);
        state.shown.status = t(Key::Paused).to_owned();
        return;
    }
    let Some(since) = active.paused_at.take() else { return };
    active.frames.clear();
    active.pipeline.gap(now - since, &mut active.frames);
    active.save_frames();
    state.shown.status = tf(Key::PausedFor, &[&format!("{:.1}", (now - since) / 1000.0)]);
}

/// The storage line while recording; a full outbox stops the recording.
fn show_storage(state: &mut State, level: Level) {
    match level {
        Level::Ok { .. } => {
            if state.shown.storage_warn {
                state.shown.storage_warn = false;
                state.shown.storage = t(Key::StorageRoom).to_owned();
            }
        }
        Level::Warn { left_ms } => {
            state.shown.storage_warn = true;
            state.shown.storage = tf(Key::StorageWarn, &[&spoken(left_ms)]);
        }
        Level::Full => {
            if matches!(state.phase, Phase::Recording(_)) {
                stop(state);
                state.shown.storage_warn = true;
                state.shown.storage = t(Key::StorageFull).to_owned();
            }
        }
    }
}

/// Stops the microphone; the recording finishes (its last frames saved and sent) until every frame is acked.
fn stop(state: &mut State) {
    let Phase::Recording(mut active) = std::mem::replace(&mut state.phase, Phase::Idle) else { return };
    active.capture.stop();
    active.frames.clear();
    active.pipeline.finish(&mut active.frames);
    active.save_frames();
    // The final length and count, exactly (the meter's updates are throttled).
    state.shown.elapsed = active.elapsed();
    state.shown.sent = active.sent.to_string();
    let pending = active.uplink.borrow().pending();
    active.writer.borrow_mut().stop();
    state.finishing =
        Some(Finishing { _uplink: active.uplink, _writer: active.writer, lock: active.lock.take(), pending });
}

/// What the live recording's uplink reports.
fn on_uplink(state: &mut State, event: Event) {
    match event {
        Event::Live | Event::Relay(LinkState::Ok, _) => state.shown.link = t(Key::LinkLive).to_owned(),
        Event::Reconnecting { retry_ms } => {
            state.shown.link = tf(Key::LinkRetrying, &[&format!("{:.1}", f64::from(retry_ms) / 1000.0)]);
        }
        Event::Relay(_, message) => state.shown.link = tf(Key::LinkBuffering, &[&message]),
        Event::Counts { acked, pending, pending_ms } => {
            state.shown.acked = acked.to_string();
            state.shown.pending = tf(Key::PendingAudio, &[&pending, &format!("{:.1}", pending_ms as f64 / 1000.0)]);
            if let Some(f) = &mut state.finishing {
                f.pending = pending;
            }
        }
        Event::Problem(p) => state.shown.storage = p,
        Event::Refused(message) => state.shown.error = message,
        Event::Done => {
            state.shown.link = t(Key::LinkDone).to_owned();
            if state.shown.storage_warn {
                state.shown.storage_warn = false;
                state.shown.storage = t(Key::StorageFreed).to_owned();
            }
            if let Some(lock) = state.finishing.take().and_then(|f| f.lock) {
                lock.release();
            }
            keep_awake(state);
        }
    }
}

/// `m:ss` (or `h:mm:ss`) of a duration in ms.
fn clock(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// "12 min 40 s" of a duration in ms.
fn spoken(ms: u64) -> String {
    let s = ms.div_ceil(1000);
    match (s / 60, s % 60) {
        (0, s) => tf(Key::SecondsOnly, &[&s]),
        (m, 0) => tf(Key::MinutesOnly, &[&m]),
        (m, s) => tf(Key::Minutes, &[&m, &s]),
    }
}

/// The "Waiting to upload" panel: a summary line and one row per recording.
fn show_waiting(ui: &Ui, rows: &[Row]) {
    let waiting: Vec<&Row> = rows.iter().filter(|r| r.state != RowState::InKafka).collect();
    let ms: u64 = waiting.iter().map(|r| r.ms).sum();
    ui.outbox.set_text_content(Some(&match waiting.len() {
        0 => t(Key::NothingWaiting).to_owned(),
        1 => tf(Key::OneWaiting, &[&spoken(ms)]),
        n => tf(Key::ManyWaiting, &[&n, &spoken(ms)]),
    }));
    ui.outbox_list.set_inner_html("");
    let Some(doc) = ui.outbox_list.owner_document() else { return };
    for r in rows {
        let started = js_sys::Date::new(&JsValue::from_f64(r.started_ms));
        let time = started.to_locale_time_string("default").as_string().unwrap_or_default();
        let state = match &r.state {
            RowState::Waiting => t(Key::RowWaiting).to_owned(),
            RowState::OtherTab => t(Key::RowOtherTab).to_owned(),
            RowState::Uploading { acked, total, live } => {
                let percent = if *total == 0 { 100 } else { acked * 100 / total };
                tf(if *live { Key::RowUploading } else { Key::RowWaitingPercent }, &[&percent])
            }
            RowState::InKafka => t(Key::RowInKafka).to_owned(),
        };
        let line = if r.state == RowState::InKafka {
            tf(Key::RowStartedDone, &[&r.car_id, &time, &state])
        } else {
            tf(Key::RowStarted, &[&r.car_id, &time, &clock(r.ms), &state])
        };
        if let Ok(li) = doc.create_element("li") {
            li.set_text_content(Some(&line));
            let _ = li.set_attribute("data-segment", &r.segment_id);
            let _ = ui.outbox_list.append_child(&li);
        }
    }
}

/// Fills the microphone selector, keeping the current choice when it still exists.
async fn list_microphones(select: HtmlSelectElement) {
    let Some(devices) = web_sys::window().and_then(|w| w.navigator().media_devices().ok()) else { return };
    let Ok(promise) = devices.enumerate_devices() else { return };
    let Ok(list) = wasm_bindgen_futures::JsFuture::from(promise).await else { return };
    let current = select.value();
    select.set_inner_html("");
    if let Ok(option) = select.owner_document().ok_or(()).and_then(|d| d.create_element("option").map_err(|_| ())) {
        let _ = option.set_attribute("value", "");
        option.set_text_content(Some(t(Key::DefaultMicrophone)));
        let _ = select.append_child(&option);
    }
    let Some(doc) = select.owner_document() else { return };
    let mut n = 0;
    for d in js_sys::Array::from(&list).iter() {
        let Ok(d) = d.dyn_into::<MediaDeviceInfo>() else { continue };
        if d.kind() != web_sys::MediaDeviceKind::Audioinput || d.device_id().is_empty() || d.device_id() == "default" {
            continue;
        }
        n += 1;
        if let Ok(option) = doc.create_element("option") {
            let _ = option.set_attribute("value", &d.device_id());
            option.set_text_content(Some(&if d.label().is_empty() {
                format!("{} {n}", t(Key::Microphone))
            } else {
                d.label()
            }));
            let _ = select.append_child(&option);
        }
    }
    select.set_value(&current);
}

fn recording_from_form(doc: &Document) -> Result<Recording, String> {
    let car_id = field_value(doc, "carId").trim().to_owned();
    if car_id.is_empty() {
        return Err(t(Key::EnterCar).into());
    }
    let now = js_sys::Date::new_0();
    let stamp = now.to_iso_string().as_string().unwrap_or_default().replace([':', '-', '.'], "");
    let recording = Recording {
        device: DeviceInfo {
            car_id: car_id.clone(),
            rail_type: field_value(doc, "railType").trim().parse().unwrap_or(0),
        },
        location: LocationInfo {
            unit_id: field_value(doc, "unitId").trim().to_owned(),
            sty: field_value(doc, "sty").trim().to_owned(),
        },
        segment_id: format!("{car_id}-{stamp}-{:04}", (js_sys::Math::random() * 10_000.0) as u32),
        inspection_info: field_value(doc, "notes"),
    };
    recording.validate().map_err(|e| e.to_string())?;
    Ok(recording)
}

/// A recording that never started: its row leaves the outbox and its lock is released.
async fn forget_recording(outbox: Option<&Outbox>, segment_id: &str, lock: Option<Held>) {
    if let Some(o) = outbox {
        let _ = o.finish(segment_id).await;
    }
    if let Some(l) = lock {
        l.release();
    }
}
