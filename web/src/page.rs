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
//! Metadata fields are remembered in localStorage. The relay is the page's own origin (`/ws/record`, `/ws/feed`),
//! or `?relay=ws://host:port` for development; `?outboxCapKb=N` caps the storage waiting audio may use.

use std::cell::RefCell;
use std::rc::Rc;

use soundline_shared::control::LinkState;
use soundline_shared::recording::{DeviceInfo, LocationInfo, Recording};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{
    Document, Element, HtmlButtonElement, HtmlInputElement, HtmlSelectElement, HtmlTextAreaElement, MediaDeviceInfo,
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
use crate::recordings::subscription::Since;
use crate::recordings::view::{LiveSpectrogram, View};
use crate::uplink::recover::{Recovery, Report, Row, RowState};
use crate::uplink::socket::{Event, Uplink};
use crate::uplink::{Flow, WINDOW_BYTES};

/// Default frame length.
const FRAME_MS: u32 = 200;
const FIELDS: [&str; 7] = ["carId", "railType", "unitId", "sty", "notes", "frameMs", "token"];

/// The elements the page updates; cheap to clone (DOM handles).
#[derive(Clone)]
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
}

/// A stopped recording, kept alive until every frame is acked.
struct Finishing {
    _uplink: Rc<RefCell<Uplink>>,
    _writer: Rc<RefCell<Writer>>,
    lock: Option<Held>,
}

struct App {
    feed: Rc<crate::recordings::subscription::FeedPanel>,
    doc: Document,
    ui: Ui,
    own_car: Rc<RefCell<String>>,
    token: Rc<RefCell<String>>,
    active: Option<Active>,
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
}

impl App {
    /// Holds the screen on while anything records or uploads.
    fn keep_awake(&self) {
        self.awake.set(self.active.is_some() || self.finishing.is_some() || self.uploading_earlier);
    }
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

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok()?
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

/// Builds the page's behaviour; called once the module loads.
pub fn init() -> Result<(), JsValue> {
    let doc = web_sys::window().and_then(|w| w.document()).ok_or("no document")?;
    choose_language(&doc)?;
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
    // The texts that change as the page runs start in the page's language.
    ui.record.set_text_content(Some(t(Key::StartRecording)));
    ui.link.set_text_content(Some(t(Key::LinkIdle)));
    ui.outbox.set_text_content(Some(t(Key::LookingForWaiting)));
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
    let feed = Rc::new(crate::recordings::subscription::start(
        format!("{base}/ws/feed"),
        Rc::clone(&token),
        view.clone(),
        by_id(&doc, "feed-status")?,
        filter,
    ));
    {
        // "All devices" switches between this car's recordings and everyone's, grouped by car.
        let (feed, own_car, all) = (Rc::clone(&feed), Rc::clone(&own_car), feed_all.clone());
        let on_change = Closure::<dyn FnMut()>::new(move || {
            let car = own_car.borrow().clone();
            feed.set_filter((!all.checked() && !car.is_empty()).then_some(car));
        });
        feed_all.add_event_listener_with_callback("change", on_change.as_ref().unchecked_ref())?;
        on_change.forget(); // the page's lifetime
    }

    {
        // The last hour, or today.
        let (feed, select) = (Rc::clone(&feed), by_id::<HtmlSelectElement>(&doc, "feed-since")?);
        let field = select.clone();
        let on_change = Closure::<dyn FnMut()>::new(move || {
            feed.set_since(if field.value() == "today" { Since::Today } else { Since::Hour });
        });
        select.add_event_listener_with_callback("change", on_change.as_ref().unchecked_ref())?;
        on_change.forget(); // the page's lifetime
    }

    {
        // A new access token: remember it, and let a refused feed try again with it.
        let (feed, token, input) = (Rc::clone(&feed), Rc::clone(&token), by_id::<HtmlInputElement>(&doc, "token")?);
        let field = input.clone();
        let on_change = Closure::<dyn FnMut()>::new(move || {
            *token.borrow_mut() = field.value();
            if let Some(store) = storage() {
                let _ = store.set_item("soundline.token", &field.value());
            }
            feed.token_changed();
        });
        input.add_event_listener_with_callback("change", on_change.as_ref().unchecked_ref())?;
        on_change.forget(); // the page's lifetime
    }

    let cap = query("outboxCapKb").and_then(|kb| kb.parse::<u64>().ok()).map(|kb| kb * 1024);
    let app = Rc::new(RefCell::new(App {
        feed,
        doc: doc.clone(),
        ui: ui.clone(),
        own_car,
        token: Rc::clone(&token),
        active: None,
        finishing: None,
        outbox: None,
        recovery: None,
        waiting_bytes: 0,
        cap,
        asked_persist: false,
        awake: Awake::new(by_id(&doc, "awake")?),
        uploading_earlier: false,
    }));
    wasm_bindgen_futures::spawn_local(register_service_worker(ui.status.clone()));
    wasm_bindgen_futures::spawn_local(open_outbox(Rc::clone(&app), format!("{base}/ws/record")));
    // The click handler owns the app, and lives as long as the page.
    let on_click = Closure::<dyn FnMut()>::new(move || toggle(&app));
    ui.record.add_event_listener_with_callback("click", on_click.as_ref().unchecked_ref())?;
    on_click.forget();

    wasm_bindgen_futures::spawn_local(list_microphones(ui.mic.clone()));
    let mic = ui.mic.clone();
    let on_devices =
        Closure::<dyn FnMut()>::new(move || wasm_bindgen_futures::spawn_local(list_microphones(mic.clone())));
    if let Ok(devices) = web_sys::window().ok_or("no window")?.navigator().media_devices() {
        devices.add_event_listener_with_callback("devicechange", on_devices.as_ref().unchecked_ref())?;
    }
    on_devices.forget();

    ui.record.set_disabled(false);
    ui.status.set_text_content(Some(&tf(Key::Ready, &[&base])));
    Ok(())
}

/// Registers `sw.js`, which makes the page open with no network. A browser that refuses (no service workers, a
/// private window) still records; it says the page will not open offline.
async fn register_service_worker(status: Element) {
    let Some(window) = web_sys::window() else { return };
    let container = window.navigator().service_worker();
    let offline_ready = container.controller().is_some();
    // Offline, the update check fails: the worker that served this page stays, which is what is wanted.
    if let Err(e) = wasm_bindgen_futures::JsFuture::from(container.register("sw.js")).await
        && !offline_ready
    {
        let why = js_sys::Reflect::get(&e, &"message".into()).ok().and_then(|m| m.as_string()).unwrap_or_default();
        let line = status.text_content().unwrap_or_default();
        status.set_text_content(Some(&format!("{line} {}", tf(Key::NoOffline, &[&why]))));
    }
}

/// The page's language: the one chosen earlier (localStorage), else `navigator.language`; the selector switches
/// it (static labels at once, everything else as it is next written).
fn choose_language(doc: &Document) -> Result<(), JsValue> {
    let stored = storage().and_then(|s| s.get_item("soundline.lang").ok().flatten());
    let tag = stored.or_else(|| web_sys::window().and_then(|w| w.navigator().language())).unwrap_or_default();
    i18n::set(Lang::from_tag(&tag));
    i18n::apply(doc);
    let select: HtmlSelectElement = by_id(doc, "lang")?;
    select.set_value(i18n::lang().tag());
    let (field, doc) = (select.clone(), doc.clone());
    let on_change = Closure::<dyn FnMut()>::new(move || {
        let lang = Lang::from_tag(&field.value());
        i18n::set(lang);
        i18n::apply(&doc);
        if let Some(s) = storage() {
            let _ = s.set_item("soundline.lang", lang.tag());
        }
    });
    select.add_event_listener_with_callback("change", on_change.as_ref().unchecked_ref())?;
    on_change.forget(); // the page's lifetime
    Ok(())
}

/// Opens the outbox and starts uploading what earlier pages left in it.
async fn open_outbox(app: Rc<RefCell<App>>, url: String) {
    let ui = app.borrow().ui.clone();
    let outbox = match Outbox::open().await {
        Ok(o) => o,
        Err(e) => {
            ui.outbox.set_text_content(Some(&tf(Key::NoOutbox, &[&store::describe(&e)])));
            return;
        }
    };
    let token = Rc::clone(&app.borrow().token);
    let weak = Rc::downgrade(&app);
    let on_report = Rc::new(move |report: Report| {
        let Some(app) = weak.upgrade() else { return };
        match report {
            Report::Rows(rows) => {
                let bytes =
                    rows.iter().map(|r| r.ms * 32 + r.frames * soundline_shared::frame::HEADER_LEN as u64).sum();
                if let Ok(mut a) = app.try_borrow_mut() {
                    a.waiting_bytes = bytes;
                    a.uploading_earlier = rows.iter().any(|r| matches!(r.state, RowState::Uploading { .. }));
                    a.keep_awake();
                }
                show_waiting(&ui, &rows);
            }
            Report::Problem(p) => ui.storage.set_text_content(Some(&p)),
        }
    });
    let recovery = Recovery::start(outbox.clone(), url, token, on_report);
    let mut a = app.borrow_mut();
    if let Some(active) = &a.active {
        recovery.borrow_mut().own(active.uplink.borrow().segment_id());
    }
    a.outbox = Some(outbox);
    a.recovery = Some(recovery);
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

fn toggle(app: &Rc<RefCell<App>>) {
    let recording = app.borrow().active.is_some();
    if recording {
        stop(app);
    } else if app.borrow().finishing.is_none() {
        start(app);
    }
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

fn start(app: &Rc<RefCell<App>>) {
    let (doc, ui) = {
        let a = app.borrow();
        (a.doc.clone(), a.ui.clone())
    };
    ui.error.set_text_content(None);
    let recording = match recording_from_form(&doc) {
        Ok(r) => r,
        Err(message) => return ui.error.set_text_content(Some(&message)),
    };
    if let Some(store) = storage() {
        for id in FIELDS {
            let _ = store.set_item(&format!("soundline.{id}"), &field_value(&doc, id));
        }
    }
    *app.borrow().own_car.borrow_mut() = recording.device.car_id.clone();
    let all = by_id::<HtmlInputElement>(&doc, "feed-all").map(|b| b.checked()).unwrap_or(false);
    if !all {
        app.borrow().feed.set_filter(Some(recording.device.car_id.clone()));
    }
    // The AudioContext must come to life inside the click itself, before anything is awaited.
    let context = match Capture::context_in_gesture() {
        Ok(c) => c,
        Err(_) => return ui.error.set_text_content(Some(t(Key::NoWebAudio))),
    };
    let frame_ms =
        by_id::<HtmlSelectElement>(&doc, "frameMs").ok().and_then(|s| s.value().parse().ok()).unwrap_or(FRAME_MS);
    ui.record.set_disabled(true);
    ui.record.set_text_content(Some(t(Key::Starting)));
    let app = Rc::clone(app);
    wasm_bindgen_futures::spawn_local(async move {
        let fail = |message: &str| {
            ui.error.set_text_content(Some(message));
            ui.record.set_text_content(Some(t(Key::StartRecording)));
            ui.record.set_class_name("");
            ui.record.set_disabled(false);
        };
        let url = match relay_base() {
            Ok(base) => format!("{base}/ws/record"),
            Err(e) => {
                let _ = context.close();
                return fail(&tf(Key::BadRelay, &[&format!("{e:?}")]));
            }
        };
        // The recording's lock and its row in the outbox come first: no other tab may take it for an earlier
        // page's, and its frames are never in the outbox without the metadata to send them.
        let segment_id = recording.segment_id.clone();
        let lock = lock::try_lock(&segment_id).await.ok().flatten();
        let outbox = app.borrow().outbox.clone();
        if let Some(r) = &app.borrow().recovery {
            r.borrow_mut().own(&segment_id);
        }
        let stored = Stored { recording: recording.clone(), frame_ms, started_ms: js_sys::Date::now() };
        let outbox = match outbox {
            Some(o) => match o.begin(&stored).await {
                Ok(()) => Some(o),
                Err(e) if store::is_quota(&e) => {
                    let _ = context.close();
                    if let Some(l) = lock {
                        l.release();
                    }
                    return fail(t(Key::FullBeforeStart));
                }
                Err(e) => {
                    ui.storage.set_text_content(Some(&tf(Key::NotKept, &[&store::describe(&e)])));
                    None
                }
            },
            None => None,
        };
        if outbox.is_some() && !app.borrow().asked_persist {
            app.borrow_mut().asked_persist = true;
            let storage_line = ui.storage.clone();
            wasm_bindgen_futures::spawn_local(async move {
                storage_line.set_text_content(Some(match quota::persist().await {
                    Some(true) => t(Key::Persisted),
                    _ => t(Key::NotPersisted),
                }));
            });
        }
        let weak = Rc::downgrade(&app);
        let on_block = move |block: &[f32]| {
            if let Some(app) = weak.upgrade() {
                on_block(&app, block);
            }
        };
        let device = ui.mic.value();
        let mut capture = match Capture::start(context.clone(), Some(&device), ui.processing.checked(), on_block).await
        {
            Ok(c) => c,
            Err(e) => {
                let _ = context.close();
                forget_recording(outbox.as_ref(), &segment_id, lock).await;
                return fail(&describe_error(&e));
            }
        };
        let rate = capture.sample_rate();
        let pipeline = match Pipeline::new(rate, frame_ms, js_sys::Date::now()) {
            Ok(p) => p,
            Err(e) => {
                capture.stop();
                forget_recording(outbox.as_ref(), &segment_id, lock).await;
                return fail(&tf(Key::UnsupportedRate, &[&e]));
            }
        };
        let weak = Rc::downgrade(&app);
        capture.on_running_change(move |running| {
            if let Some(app) = weak.upgrade() {
                capture_paused(&app, !running);
            }
        });
        let on_event = uplink_events(&app, ui.clone());
        let token = field_value(&doc, "token");
        let uplink = Uplink::start(url, token, recording, frame_ms, Flow::new(WINDOW_BYTES), outbox.clone(), on_event);
        let writer = Writer::new(outbox, segment_id, Rc::clone(&uplink), writer_events(&app, ui.clone()));
        app.borrow_mut().active = Some(Active {
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
            live: LiveSpectrogram::new(ui.live.clone()),
        });
        app.borrow().keep_awake();
        ui.record.set_text_content(Some(t(Key::StopRecording)));
        ui.record.set_class_name("on");
        ui.record.set_disabled(false);
        ui.status.set_text_content(Some(&tf(Key::RecordingAt, &[&rate])));
    });
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

fn on_block(app: &Rc<RefCell<App>>, block: &[f32]) {
    let mut a = app.borrow_mut();
    let ui = a.ui.clone();
    let (waiting_bytes, cap) = (a.waiting_bytes, a.cap);
    let Some(active) = a.active.as_mut() else { return };
    active.samples_in += block.len() as u64;
    active.frames.clear();
    active.pipeline.push(block, &mut active.frames);
    active.save_frames();
    let now = js_sys::Date::now();
    if now - active.last_ui_ms >= 100.0 {
        active.last_ui_ms = now;
        let db = peak_dbfs(block);
        let shown = if db.is_finite() { format!("{db:.1} dBFS") } else { "-∞ dBFS".into() };
        ui.level.set_text_content(Some(&shown));
        let width = ((db + 60.0) / 60.0 * 100.0).clamp(0.0, 100.0);
        // Through the CSSOM: a `style` attribute would be an inline style, which the page's CSP forbids.
        let _ = ui.level_bar.style().set_property("width", &format!("{width:.0}%"));
        show_elapsed(&ui, active);
        ui.sent.set_text_content(Some(&active.sent.to_string()));
        ui.clipped.set_text_content(Some(&active.pipeline.clipped().to_string()));
    }
    if now - active.last_storage_ms >= STORAGE_CHECK_MS {
        active.last_storage_ms = now;
        let own = active.uplink.borrow().pending() * store::frame_bytes(active.frame_ms);
        let weak = Rc::downgrade(app);
        wasm_bindgen_futures::spawn_local(async move {
            let (usage, quota_bytes) = quota::estimate().await;
            let level = quota::level(own + waiting_bytes, usage, quota_bytes, cap, store::frame_bytes(1000));
            if let Some(app) = weak.upgrade() {
                show_storage(&app, level);
            }
        });
    }
}

/// The browser paused (or resumed) capture: the recording marks the hole (the frames' timestamps skip it) and the
/// page says how long it was.
fn capture_paused(app: &Rc<RefCell<App>>, paused: bool) {
    let mut a = app.borrow_mut();
    let ui = a.ui.clone();
    let Some(active) = a.active.as_mut() else { return };
    let now = js_sys::Date::now();
    if paused {
        active.paused_at.get_or_insert(now);
        ui.status.set_text_content(Some(t(Key::Paused)));
        return;
    }
    let Some(since) = active.paused_at.take() else { return };
    active.frames.clear();
    active.pipeline.gap(now - since, &mut active.frames);
    active.save_frames();
    ui.status.set_text_content(Some(&tf(Key::PausedFor, &[&format!("{:.1}", (now - since) / 1000.0)])));
}

/// How often storage is looked at while recording.
const STORAGE_CHECK_MS: f64 = 1_000.0;

/// The storage line while recording; a full outbox stops the recording.
fn show_storage(app: &Rc<RefCell<App>>, level: Level) {
    let ui = app.borrow().ui.clone();
    match level {
        Level::Ok { .. } => {
            if ui.storage.class_name() == "warn" {
                ui.storage.set_class_name("");
                ui.storage.set_text_content(Some(t(Key::StorageRoom)));
            }
        }
        Level::Warn { left_ms } => {
            ui.storage.set_class_name("warn");
            ui.storage.set_text_content(Some(&tf(Key::StorageWarn, &[&spoken(left_ms)])));
        }
        Level::Full => {
            let recording = app.borrow().active.is_some();
            if recording {
                stop(app);
                ui.storage.set_class_name("warn");
                ui.storage.set_text_content(Some(t(Key::StorageFull)));
            }
        }
    }
}

fn show_elapsed(ui: &Ui, active: &Active) {
    let seconds = active.samples_in as f64 / f64::from(active.rate);
    ui.elapsed.set_text_content(Some(&format!("{}:{:04.1}", (seconds / 60.0) as u64, seconds % 60.0)));
}

fn stop(app: &Rc<RefCell<App>>) {
    let mut a = app.borrow_mut();
    let ui = a.ui.clone();
    let Some(mut active) = a.active.take() else { return };
    a.finishing = Some(Finishing {
        _uplink: Rc::clone(&active.uplink),
        _writer: Rc::clone(&active.writer),
        lock: active.lock.take(),
    });
    drop(a);
    active.capture.stop();
    // The final length, exactly (the meter's updates are throttled).
    show_elapsed(&ui, &active);
    active.frames.clear();
    active.pipeline.finish(&mut active.frames);
    ui.record.set_disabled(true);
    ui.record.set_class_name("");
    ui.record.set_text_content(Some(&tf(Key::Finishing, &[&active.uplink.borrow().pending()])));
    active.save_frames();
    ui.sent.set_text_content(Some(&active.sent.to_string()));
    active.writer.borrow_mut().stop();
}

/// What the writer reports: frames saved on the device, or a batch it could not save.
fn writer_events(app: &Rc<RefCell<App>>, ui: Ui) -> Rc<dyn Fn(Saved)> {
    let weak = Rc::downgrade(app);
    Rc::new(move |saved| match saved {
        Saved::Saved { frames, .. } => ui.saved.set_text_content(Some(&frames.to_string())),
        Saved::Failed { message, quota, ms } => {
            ui.storage.set_class_name("warn");
            ui.storage
                .set_text_content(Some(&tf(Key::NotSaved, &[&format!("{:.1}", f64::from(ms) / 1000.0), &message])));
            if quota {
                // Outside the writer's call (it is borrowed): stop as the Stop button does.
                let weak = weak.clone();
                crate::later(0, move || {
                    if let Some(app) = weak.upgrade() {
                        stop(&app);
                    }
                });
            }
        }
    })
}

/// The uplink's events, shown on the page. Runs without borrowing the app (events can fire inside its calls).
fn uplink_events(app: &Rc<RefCell<App>>, ui: Ui) -> Rc<dyn Fn(Event)> {
    let weak = Rc::downgrade(app);
    Rc::new(move |event| match event {
        Event::Live => ui.link.set_text_content(Some(t(Key::LinkLive))),
        Event::Reconnecting { retry_ms } => {
            ui.link.set_text_content(Some(&tf(Key::LinkRetrying, &[&format!("{:.1}", f64::from(retry_ms) / 1000.0)])));
        }
        Event::Relay(LinkState::Ok, _) => ui.link.set_text_content(Some(t(Key::LinkLive))),
        Event::Relay(_, message) => ui.link.set_text_content(Some(&tf(Key::LinkBuffering, &[&message]))),
        Event::Counts { acked, pending, pending_ms } => {
            ui.acked.set_text_content(Some(&acked.to_string()));
            ui.pending.set_text_content(Some(&tf(
                Key::PendingAudio,
                &[&pending, &format!("{:.1}", pending_ms as f64 / 1000.0)],
            )));
            if let Some(app) = weak.upgrade()
                && let Ok(a) = app.try_borrow()
                && a.finishing.is_some()
            {
                ui.record.set_text_content(Some(&tf(Key::Finishing, &[&pending])));
            }
        }
        Event::Problem(p) => ui.storage.set_text_content(Some(&p)),
        Event::Refused(message) => ui.error.set_text_content(Some(&message)),
        Event::Done => {
            ui.link.set_text_content(Some(t(Key::LinkDone)));
            ui.record.set_text_content(Some(t(Key::StartRecording)));
            ui.record.set_disabled(false);
            // Outside any borrow of the app: let the current call return first.
            let weak = weak.clone();
            if ui.storage.class_name() == "warn" {
                ui.storage.set_class_name("");
                ui.storage.set_text_content(Some(t(Key::StorageFreed)));
            }
            crate::later(0, move || {
                let Some(app) = weak.upgrade() else { return };
                let finished = app.borrow_mut().finishing.take();
                if let Some(lock) = finished.and_then(|f| f.lock) {
                    lock.release();
                }
                app.borrow().keep_awake();
            });
        }
    })
}
