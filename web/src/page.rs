//! The page: the form, Start/Stop, the level meter and counters, and the wiring from capture to uplink.
//!
//! ```text
//!  Start click ─► Capture::start (mic, AudioContext, worklet) ─► block ─► Pipeline::push ─► frames ─► Uplink::push
//!                                                                   └─► level meter, elapsed time
//!  Uplink events ─► link state, counters, errors          Stop ─► Pipeline::finish ─► Uplink::stop ─► Done
//! ```
//!
//! Metadata fields are remembered in localStorage. The relay is the page's own origin (`/ws/record`, `/ws/feed`),
//! or `?relay=ws://host:port` for development.

use std::cell::RefCell;
use std::rc::Rc;

use soundline_shared::control::LinkState;
use soundline_shared::recording::{DeviceInfo, LocationInfo, Recording};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{
    Document, Element, HtmlButtonElement, HtmlInputElement, HtmlSelectElement, HtmlTextAreaElement, MediaDeviceInfo,
};

use crate::capture::{Capture, describe_error};
use crate::pipeline::{Frame, Pipeline, peak_dbfs};
use crate::uplink::socket::{Event, Uplink};

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
    error: Element,
    status: Element,
}

struct Active {
    capture: Capture,
    pipeline: Pipeline,
    uplink: Rc<RefCell<Uplink>>,
    frames: Vec<Frame>,
    sent: u64,
    samples_in: u64,
    rate: u32,
    last_ui_ms: f64,
}

struct App {
    feed: Rc<crate::feed::FeedPanel>,
    doc: Document,
    ui: Ui,
    own_car: Rc<RefCell<String>>,
    active: Option<Active>,
    /// A stopped recording's uplink, kept alive until every frame is acked.
    finishing: Option<Rc<RefCell<Uplink>>>,
}

fn by_id<T: JsCast>(doc: &Document, id: &str) -> Result<T, JsValue> {
    doc.get_element_by_id(id)
        .ok_or_else(|| JsValue::from_str(&format!("#{id} is missing")))?
        .dyn_into::<T>()
        .map_err(|_| format!("#{id} has the wrong type").into())
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
        error: by_id(&doc, "error")?,
        status: by_id(&doc, "status")?,
    };
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
    let feed = Rc::new(crate::feed::start(
        format!("{base}/ws/feed"),
        Rc::clone(&token),
        by_id(&doc, "feed")?,
        by_id(&doc, "feed-status")?,
        Rc::clone(&own_car),
        filter,
    ));
    {
        // "All devices" switches between this car's records and everyone's.
        let (feed, own_car, all) = (Rc::clone(&feed), Rc::clone(&own_car), feed_all.clone());
        let on_change = Closure::<dyn FnMut()>::new(move || {
            let car = own_car.borrow().clone();
            feed.set_filter((!all.checked() && !car.is_empty()).then_some(car));
        });
        feed_all.add_event_listener_with_callback("change", on_change.as_ref().unchecked_ref())?;
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

    let app =
        Rc::new(RefCell::new(App { feed, doc: doc.clone(), ui: ui.clone(), own_car, active: None, finishing: None }));
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
    ui.status.set_text_content(Some(&format!("Ready. Relay: {base}")));
    Ok(())
}

/// Fills the microphone selector, keeping the current choice when it still exists.
async fn list_microphones(select: HtmlSelectElement) {
    let Some(devices) = web_sys::window().and_then(|w| w.navigator().media_devices().ok()) else { return };
    let Ok(promise) = devices.enumerate_devices() else { return };
    let Ok(list) = wasm_bindgen_futures::JsFuture::from(promise).await else { return };
    let current = select.value();
    select.set_inner_html("<option value=\"\">Default microphone</option>");
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
            option.set_text_content(Some(&if d.label().is_empty() { format!("Microphone {n}") } else { d.label() }));
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
        return Err("Enter the car (device) ID before recording.".into());
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
        Err(_) => return ui.error.set_text_content(Some("This browser cannot record audio (no Web Audio).")),
    };
    let frame_ms =
        by_id::<HtmlSelectElement>(&doc, "frameMs").ok().and_then(|s| s.value().parse().ok()).unwrap_or(FRAME_MS);
    ui.record.set_disabled(true);
    ui.record.set_text_content(Some("Starting…"));
    let app = Rc::clone(app);
    wasm_bindgen_futures::spawn_local(async move {
        let weak = Rc::downgrade(&app);
        let on_block = move |block: &[f32]| {
            if let Some(app) = weak.upgrade() {
                on_block(&app, block);
            }
        };
        let device = ui.mic.value();
        let capture = match Capture::start(context.clone(), Some(&device), ui.processing.checked(), on_block).await {
            Ok(c) => c,
            Err(e) => {
                let _ = context.close();
                ui.error.set_text_content(Some(&describe_error(&e)));
                ui.record.set_text_content(Some("Start recording"));
                ui.record.set_disabled(false);
                return;
            }
        };
        let rate = capture.sample_rate();
        let pipeline = match Pipeline::new(rate, frame_ms, js_sys::Date::now()) {
            Ok(p) => p,
            Err(e) => {
                capture.stop();
                ui.error.set_text_content(Some(&format!("This device records at an unsupported rate: {e}")));
                ui.record.set_disabled(false);
                return;
            }
        };
        let url = match relay_base() {
            Ok(base) => format!("{base}/ws/record"),
            Err(_) => return,
        };
        let on_event = uplink_events(&app, ui.clone());
        let uplink = Uplink::start(url, field_value(&doc, "token"), recording, on_event);
        app.borrow_mut().active = Some(Active {
            capture,
            pipeline,
            uplink,
            frames: Vec::new(),
            sent: 0,
            samples_in: 0,
            rate,
            last_ui_ms: 0.0,
        });
        ui.record.set_text_content(Some("Stop recording"));
        ui.record.set_class_name("on");
        ui.record.set_disabled(false);
        ui.status.set_text_content(Some(&format!("Recording at {rate} Hz, sent as 16 kHz.")));
    });
}

fn on_block(app: &Rc<RefCell<App>>, block: &[f32]) {
    let mut a = app.borrow_mut();
    let ui = a.ui.clone();
    let Some(active) = a.active.as_mut() else { return };
    active.samples_in += block.len() as u64;
    active.frames.clear();
    active.pipeline.push(block, &mut active.frames);
    for frame in &active.frames {
        active.uplink.borrow_mut().push(frame);
        active.sent += 1;
    }
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
}

fn show_elapsed(ui: &Ui, active: &Active) {
    let seconds = active.samples_in as f64 / f64::from(active.rate);
    ui.elapsed.set_text_content(Some(&format!("{}:{:04.1}", (seconds / 60.0) as u64, seconds % 60.0)));
}

fn stop(app: &Rc<RefCell<App>>) {
    let mut a = app.borrow_mut();
    let ui = a.ui.clone();
    let Some(mut active) = a.active.take() else { return };
    a.finishing = Some(Rc::clone(&active.uplink));
    drop(a);
    active.capture.stop();
    // The final length, exactly (the meter's updates are throttled).
    show_elapsed(&ui, &active);
    active.frames.clear();
    active.pipeline.finish(&mut active.frames);
    let mut uplink = active.uplink.borrow_mut();
    for frame in &active.frames {
        uplink.push(frame);
        active.sent += 1;
    }
    ui.sent.set_text_content(Some(&active.sent.to_string()));
    ui.record.set_disabled(true);
    ui.record.set_class_name("");
    ui.record.set_text_content(Some(&format!("Finishing: {} frames to confirm…", uplink.pending())));
    uplink.stop();
}

/// The uplink's events, shown on the page. Runs without borrowing the app (events can fire inside its calls).
fn uplink_events(app: &Rc<RefCell<App>>, ui: Ui) -> Rc<dyn Fn(Event)> {
    let weak = Rc::downgrade(app);
    Rc::new(move |event| match event {
        Event::Live => ui.link.set_text_content(Some("live")),
        Event::Reconnecting { retry_ms } => {
            ui.link.set_text_content(Some(&format!(
                "relay unreachable, retrying in {:.1} s (recording goes on; frames wait here)",
                f64::from(retry_ms) / 1000.0
            )));
        }
        Event::Relay(LinkState::Ok, _) => ui.link.set_text_content(Some("live")),
        Event::Relay(_, message) => ui.link.set_text_content(Some(&format!("buffering: {message}"))),
        Event::Counts { acked, pending, pending_ms } => {
            ui.acked.set_text_content(Some(&acked.to_string()));
            ui.pending.set_text_content(Some(&format!("{pending} ({:.1} s of audio)", pending_ms as f64 / 1000.0)));
            if let Some(app) = weak.upgrade()
                && let Ok(a) = app.try_borrow()
                && a.finishing.is_some()
            {
                ui.record.set_text_content(Some(&format!("Finishing: {pending} frames to confirm…")));
            }
        }
        Event::Dropped(frames) => {
            let ms: u32 = frames.iter().map(|f| f.duration_ms).sum();
            let first = frames.first().map(|f| f.seq).unwrap_or_default();
            ui.error.set_text_content(Some(&format!(
                "The relay has been unreachable too long: the resend buffer is full and {:.1} s of audio (from frame {first}) was dropped.",
                f64::from(ms) / 1000.0
            )));
        }
        Event::Refused(message) => ui.error.set_text_content(Some(&message)),
        Event::Done => {
            ui.link.set_text_content(Some("idle: every frame is in Kafka"));
            ui.record.set_text_content(Some("Start recording"));
            ui.record.set_disabled(false);
            // Outside any borrow of the app: let the current call return first.
            let weak = weak.clone();
            crate::later(0, move || {
                if let Some(app) = weak.upgrade() {
                    app.borrow_mut().finishing = None;
                }
            });
        }
    })
}
