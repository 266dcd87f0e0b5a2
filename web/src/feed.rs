//! The feed panel: what reached Kafka, live from the relay's `/ws/feed`, with playback of each frame.
//!
//! Where it sits: the last hop back. The relay's fan-out sends the audio topic's records, by default only this
//! device's car (a feed of every device would be thousands of records a second on a busy site; supervisors tick
//! "all devices"); this shows the newest ones (device, time, duration, partition/offset, this device's own marked), plays an envelope's PCM
//! through WebAudio at 16 kHz, and shows other JSON records (analysis results) as text. It reconnects on its
//! own, resuming after the last record it showed.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use soundline_shared::control::ErrorCode;
use soundline_shared::feed::{FeedClientMessage, FeedRecord, FeedServerMessage, From, Subscribe};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{AudioContext, CloseEvent, Document, Element, MessageEvent, WebSocket};

/// Rows kept in the panel.
const MAX_ROWS: usize = 50;

struct Feed {
    url: String,
    /// The access token field's current value.
    token: Rc<RefCell<String>>,
    /// The relay refused the token: wait for a new one instead of retrying.
    needs_token: bool,
    /// The token the current connection offered.
    token_used: String,
    list: Element,
    status: Element,
    own_car: Rc<RefCell<String>>,
    /// Only this carID's records (a technician's own device); `None`: every record (a supervisor's view).
    filter: Option<String>,
    next: BTreeMap<i32, i64>,
    player: Option<AudioContext>,
    ws: Option<WebSocket>,
    handlers: Vec<Box<dyn std::any::Any>>,
}

/// The running panel; keep it for as long as the page shows it (its socket handlers hold only weak references).
pub struct FeedPanel(Rc<RefCell<Feed>>);

impl FeedPanel {
    /// Shows only `car_id`'s records (or every record): subscribes again, live.
    pub fn set_filter(&self, car_id: Option<String>) {
        {
            let mut f = self.0.borrow_mut();
            if f.filter == car_id {
                return;
            }
            f.filter = car_id;
            f.next.clear();
            if let Some(old) = f.ws.take() {
                old.set_onclose(None);
                old.set_onmessage(None);
                let _ = old.close();
            }
            f.status.set_text_content(Some("Feed: connecting…"));
        }
        connect(&self.0);
    }
}

impl FeedPanel {
    /// The access token changed: reconnect if the relay had refused the old one.
    pub fn token_changed(&self) {
        if !std::mem::take(&mut self.0.borrow_mut().needs_token) {
            return;
        }
        self.0.borrow().status.set_text_content(Some("Feed: connecting…"));
        connect(&self.0);
    }
}

/// Starts the panel: `list` gets one row per record, `status` the connection state; `filter` as in
/// [`FeedPanel::set_filter`].
pub fn start(
    url: String,
    token: Rc<RefCell<String>>,
    list: Element,
    status: Element,
    own_car: Rc<RefCell<String>>,
    filter: Option<String>,
) -> FeedPanel {
    let feed = Rc::new(RefCell::new(Feed {
        url,
        token,
        needs_token: false,
        token_used: String::new(),
        list,
        status,
        own_car,
        filter,
        next: BTreeMap::new(),
        player: None,
        ws: None,
        handlers: Vec::new(),
    }));
    connect(&feed);
    FeedPanel(feed)
}

fn connect(feed: &Rc<RefCell<Feed>>) {
    let mut f = feed.borrow_mut();
    let token = f.token.borrow().trim().to_owned();
    let Ok(ws) = crate::open_socket(&f.url, &token) else { return retry(feed) };
    f.token_used = token;
    let from = if f.next.is_empty() { From::Live } else { From::Offsets(f.next.clone()) };
    let subscribe =
        FeedClientMessage::Subscribe(Subscribe { topic: None, from, car_id: f.filter.clone(), segment_id: None })
            .to_json();
    let socket = ws.clone();
    let on_open = Closure::<dyn FnMut()>::new(move || {
        let _ = socket.send_with_str(&subscribe);
    });
    let weak = Rc::downgrade(feed);
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
        let (Some(text), Some(feed)) = (e.data().as_string(), weak.upgrade()) else { return };
        on_text(&feed, &text);
    });
    let weak = Rc::downgrade(feed);
    let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| {
        if let Some(feed) = weak.upgrade() {
            if e.code() == ErrorCode::Unauthorized.close_code() {
                // A token typed while this connection was opening: try it now.
                let entered = feed.borrow().token.borrow().trim().to_owned();
                if !entered.is_empty() && entered != feed.borrow().token_used {
                    return connect(&feed);
                }
                let mut f = feed.borrow_mut();
                f.needs_token = true;
                let why = if f.token.borrow().trim().is_empty() { "needs" } else { "refused" };
                f.status.set_text_content(Some(&format!("Feed: the relay {why} an access token (enter it above)")));
                return;
            }
            feed.borrow().status.set_text_content(Some("Feed: reconnecting…"));
            retry(&feed);
        }
    });
    ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    f.handlers = vec![Box::new(on_open), Box::new(on_message), Box::new(on_close)];
    f.ws = Some(ws);
}

fn retry(feed: &Rc<RefCell<Feed>>) {
    let weak = Rc::downgrade(feed);
    let delay_ms = 1000 + (js_sys::Math::random() * 2000.0) as u32;
    crate::later(delay_ms, move || {
        if let Some(feed) = weak.upgrade() {
            connect(&feed);
        }
    });
}

fn on_text(feed: &Rc<RefCell<Feed>>, text: &str) {
    let Ok(msg) = FeedServerMessage::parse(text) else { return };
    match msg {
        FeedServerMessage::Subscribed { from, .. } => {
            let mut f = feed.borrow_mut();
            f.next.extend(from);
            let scope = f.filter.as_deref().map_or_else(|| "all devices".to_owned(), |car| format!("car {car}"));
            f.status.set_text_content(Some(&format!("Feed: live ({scope})")));
        }
        FeedServerMessage::Record(record) => {
            feed.borrow_mut().next.insert(record.partition, record.offset + 1);
            if let Err(e) = add_row(feed, &record) {
                web_sys::console::warn_1(&e);
            }
        }
        FeedServerMessage::Lagged { missed, .. } => {
            feed.borrow()
                .status
                .set_text_content(Some(&format!("Feed: live ({missed} older records skipped to keep up)")));
        }
    }
}

fn text_of(v: &serde_json::Value, path: &[&str]) -> String {
    let mut node = v;
    for p in path {
        node = &node[*p];
    }
    match node {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn add_row(feed: &Rc<RefCell<Feed>>, record: &FeedRecord) -> Result<(), JsValue> {
    let f = feed.borrow();
    let document: Document = f.list.owner_document().ok_or("no document")?;
    let row = document.create_element("li")?;
    let where_ = format!("p{}/o{}", record.partition, record.offset);
    match record.kind.as_str() {
        "envelope" => {
            let car = text_of(&record.value, &["deviceInfo", "carID"]);
            let ms = record.value["collectTimestamp"].as_f64().unwrap_or_default();
            let time = js_sys::Date::new(&JsValue::from_f64(ms)).to_locale_time_string("en-GB");
            let duration = text_of(&record.value, &["originData", "duration"]);
            let own = if *f.own_car.borrow() == car { " (this device)" } else { "" };
            let label = document.create_element("span")?;
            label.set_text_content(Some(&format!("{car}{own} · {time} · {duration} ms · {where_}")));
            row.append_child(&label)?;
            let button = document.create_element("button")?;
            button.set_text_content(Some("Play"));
            button.set_attribute("type", "button")?;
            button.set_attribute("aria-label", &format!("Play {car} at {time}"))?;
            let pcm = text_of(&record.value, &["originData", "base64"]);
            let weak = Rc::downgrade(feed);
            let play = Closure::<dyn FnMut()>::new(move || {
                if let Some(feed) = weak.upgrade()
                    && let Err(e) = play(&feed, &pcm)
                {
                    web_sys::console::warn_1(&e);
                }
            });
            button.add_event_listener_with_callback("click", play.as_ref().unchecked_ref())?;
            play.forget(); // lives as long as its row; rows are few and short-lived
            row.append_child(&button)?;
        }
        kind => {
            let pre = document.create_element("pre")?;
            let body = if kind == "json" { record.value.to_string() } else { format!("opaque: {}", record.value) };
            let shown: String = body.chars().take(300).collect();
            pre.set_text_content(Some(&format!("{where_} {}: {shown}", record.key.as_deref().unwrap_or("-"))));
            row.append_child(&pre)?;
        }
    }
    f.list.insert_before(&row, f.list.first_child().as_ref())?;
    while f.list.child_element_count() as usize > MAX_ROWS {
        if let Some(last) = f.list.last_element_child() {
            last.remove();
        }
    }
    Ok(())
}

fn play(feed: &Rc<RefCell<Feed>>, pcm_base64: &str) -> Result<(), JsValue> {
    let bytes = BASE64.decode(pcm_base64).map_err(|e| JsValue::from_str(&e.to_string()))?;
    let samples: Vec<f32> =
        bytes.chunks_exact(2).map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0).collect();
    if samples.is_empty() {
        return Ok(());
    }
    let mut f = feed.borrow_mut();
    if f.player.is_none() {
        f.player = Some(AudioContext::new()?);
    }
    let ctx = f.player.as_ref().ok_or("no audio context")?;
    let _ = ctx.resume();
    let buffer = ctx.create_buffer(1, samples.len() as u32, 16_000.0)?;
    buffer.copy_to_channel(&samples, 0)?;
    let source = ctx.create_buffer_source()?;
    source.set_buffer(Some(&buffer));
    source.connect_with_audio_node(&ctx.destination())?;
    source.start()?;
    Ok(())
}
