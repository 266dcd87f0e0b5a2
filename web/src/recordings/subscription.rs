//! The feed socket: what reached Kafka, live from the relay's `/ws/feed`, into the recordings list.
//!
//! Where it sits: the last hop back. The relay's fan-out sends the audio topic's records without their PCM
//! (`"pcm": false`), by default only this device's car and the last hour of it (a feed of every device would be
//! thousands of records a second on a busy site; supervisors tick "all devices"). Each envelope becomes a frame
//! of its recording ([`crate::recordings`]). When the relay serves other topics too (its `feed_topics`, named in
//! `subscribed`: analysis results), the page subscribes to each, and a JSON record that names a carID and a
//! segmentId is shown on the recording it belongs to. It reconnects on its own, resuming after the last record
//! it had.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use gloo_timers::callback::Timeout;
use soundline_shared::backoff::Backoff;
use soundline_shared::control::ErrorCode;
use soundline_shared::feed::{FeedClientMessage, FeedRecord, FeedServerMessage, From, Subscribe};
use web_sys::{Element, WebSocket};

use crate::i18n::{Key, t};
use crate::recordings::FrameRef;
use crate::recordings::view::View;

/// How far back the list starts by default: the last hour.
pub const HISTORY_MS: f64 = 3_600_000.0;

/// Where the list starts: an hour back, or the start of today (the device's local midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// The last hour.
    Hour,
    /// Since local midnight.
    Today,
}

impl Since {
    /// The start, ms since the epoch.
    fn start_ms(self) -> f64 {
        let now = js_sys::Date::new_0();
        match self {
            Self::Hour => now.get_time() - HISTORY_MS,
            Self::Today => {
                now.set_hours(0);
                now.set_minutes(0);
                now.set_seconds(0);
                now.set_milliseconds(0);
                now.get_time()
            }
        }
    }
}

struct Feed {
    url: String,
    /// The access token field's current value.
    token: Rc<RefCell<String>>,
    /// The relay refused the token: wait for a new one instead of retrying.
    needs_token: bool,
    /// The token the current connection offered.
    token_used: String,
    /// Where the connection state is shown (the audio topic's feed only).
    status: Option<Element>,
    view: View,
    /// `None`: the audio topic; else one of the relay's `feed_topics` (analysis results).
    topic: Option<String>,
    /// The results topics' feeds, started when the audio feed's `subscribed` names them.
    results: Vec<Rc<RefCell<Feed>>>,
    /// Only this carID's records (a technician's own device); `None`: every record (a supervisor's view).
    filter: Option<String>,
    /// How far back the list starts.
    since: Since,
    /// Reconnecting: 1 s doubling to 30 s, with jitter.
    backoff: Backoff,
    next: BTreeMap<i32, i64>,
    /// The socket and its handlers (dropped together: a replaced socket's events never arrive).
    ws: Option<(WebSocket, crate::SocketHooks)>,
    /// The next attempt, while waiting for it (dropping it cancels it).
    retry: Option<Timeout>,
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
            // Every device's recordings are grouped by car (the supervisor view).
            f.view.reset(car_id.is_none());
            f.filter = car_id;
            f.restart();
            f.show(t(Key::FeedConnecting));
        }
        connect(&self.0);
    }
}

impl FeedPanel {
    /// Lists recordings from `since` on: subscribes again (the results topics too).
    pub fn set_since(&self, since: Since) {
        let results = {
            let mut f = self.0.borrow_mut();
            if f.since == since {
                return;
            }
            f.since = since;
            let grouped = f.filter.is_none();
            f.view.reset(grouped);
            f.show(t(Key::FeedConnecting));
            f.results.clone()
        };
        for feed in std::iter::once(Rc::clone(&self.0)).chain(results) {
            {
                let mut f = feed.borrow_mut();
                f.since = since;
                f.restart();
            }
            connect(&feed);
        }
    }
}

impl Feed {
    /// A feed of `topic` (`None`: the audio topic) into `view`, not yet connected.
    fn new(
        url: String,
        token: Rc<RefCell<String>>,
        view: View,
        status: Option<Element>,
        topic: Option<String>,
        filter: Option<String>,
        since: Since,
    ) -> Rc<RefCell<Self>> {
        Rc::new(RefCell::new(Self {
            url,
            token,
            needs_token: false,
            token_used: String::new(),
            status,
            view,
            topic,
            results: Vec::new(),
            filter,
            since,
            backoff: Backoff::FEED,
            next: BTreeMap::new(),
            ws: None,
            retry: None,
        }))
    }

    /// Forgets where it was and closes its socket (quietly: its handlers are unhooked first), so that the next
    /// `connect` subscribes afresh.
    fn restart(&mut self) {
        self.next.clear();
        self.retry = None;
        if let Some((old, hooks)) = self.ws.take() {
            drop(hooks);
            let _ = old.close();
        }
    }

    fn show(&self, text: &str) {
        if let Some(s) = &self.status {
            s.set_text_content(Some(text));
        }
    }
}

impl FeedPanel {
    /// The access token changed: reconnect if the relay had refused the old one.
    pub fn token_changed(&self) {
        let results = self.0.borrow().results.clone();
        for feed in std::iter::once(Rc::clone(&self.0)).chain(results) {
            if std::mem::take(&mut feed.borrow_mut().needs_token) {
                feed.borrow().show(t(Key::FeedConnecting));
                connect(&feed);
            }
        }
    }
}

/// Starts the feed into `view`; `status` shows the connection; `filter` as in [`FeedPanel::set_filter`].
pub fn start(
    url: String,
    token: Rc<RefCell<String>>,
    view: View,
    status: Element,
    filter: Option<String>,
) -> FeedPanel {
    let feed = Feed::new(url, token, view, Some(status), None, filter, Since::Hour);
    connect(&feed);
    FeedPanel(feed)
}

fn connect(feed: &Rc<RefCell<Feed>>) {
    let mut f = feed.borrow_mut();
    let token = f.token.borrow().trim().to_owned();
    let Ok(ws) = crate::open_socket(&f.url, &token) else { return retry(feed) };
    f.token_used = token;
    // The first connection starts an hour back; a reconnect resumes after the last record it had.
    let from =
        if f.next.is_empty() { From::TimestampMs(f.since.start_ms() as i64) } else { From::Offsets(f.next.clone()) };
    let subscribe = FeedClientMessage::Subscribe(Subscribe {
        topic: f.topic.clone(),
        from,
        pcm: false,
        ..Subscribe::live(f.filter.clone(), None)
    })
    .to_json();
    let socket = ws.clone();
    let on_open = move || {
        let _ = socket.send_with_str(&subscribe);
    };
    let weak = Rc::downgrade(feed);
    let on_message = move |text: String| {
        if let Some(feed) = weak.upgrade() {
            on_text(&feed, &text);
        }
    };
    let weak = Rc::downgrade(feed);
    let on_close = move |code: u16| {
        if let Some(feed) = weak.upgrade() {
            feed.borrow_mut().ws = None;
            if code == ErrorCode::Unauthorized.close_code() {
                // A token typed while this connection was opening: try it now.
                let entered = feed.borrow().token.borrow().trim().to_owned();
                if !entered.is_empty() && entered != feed.borrow().token_used {
                    return connect(&feed);
                }
                let mut f = feed.borrow_mut();
                f.needs_token = true;
                let why = if f.token.borrow().trim().is_empty() { Key::FeedNeedsToken } else { Key::FeedTokenRefused };
                f.show(t(why));
                return;
            }
            feed.borrow().show(t(Key::FeedReconnecting));
            retry(&feed);
        }
    };
    let hooks = crate::SocketHooks::new(&ws, on_open, on_message, on_close);
    f.retry = None;
    f.ws = Some((ws, hooks));
}

fn retry(feed: &Rc<RefCell<Feed>>) {
    let weak = Rc::downgrade(feed);
    let mut f = feed.borrow_mut();
    let delay_ms = f.backoff.next_delay(js_sys::Math::random()).as_millis() as u32;
    f.retry = Some(Timeout::new(delay_ms, move || {
        if let Some(feed) = weak.upgrade() {
            connect(&feed);
        }
    }));
}

fn on_text(feed: &Rc<RefCell<Feed>>, text: &str) {
    let Ok(msg) = FeedServerMessage::parse(text) else { return };
    match msg {
        FeedServerMessage::Subscribed { from, feed_topics, .. } => {
            let mut f = feed.borrow_mut();
            f.backoff.reset();
            f.next.extend(from);
            let scope = match f.filter.as_deref() {
                Some(car) => format!("{} {car}", t(Key::Car)),
                None => t(Key::AllDevices).to_owned(),
            };
            f.show(&format!("{} ({scope})", t(Key::FeedLive)));
            // The relay's other topics (analysis results): their records that name a recording show on it.
            if f.topic.is_none() && f.results.is_empty() && !feed_topics.is_empty() {
                let results: Vec<Rc<RefCell<Feed>>> = feed_topics
                    .into_iter()
                    .map(|topic| {
                        Feed::new(f.url.clone(), Rc::clone(&f.token), f.view.clone(), None, Some(topic), None, f.since)
                    })
                    .collect();
                f.results = results.clone();
                drop(f);
                for r in &results {
                    connect(r);
                }
            }
        }
        FeedServerMessage::Record(record) => {
            let mut f = feed.borrow_mut();
            f.next.insert(record.partition, record.offset + 1);
            add(&mut f, &record);
        }
        FeedServerMessage::Lagged { missed, .. } => {
            feed.borrow().show(&format!("{} ({missed} {})", t(Key::FeedLive), t(Key::FeedSkipped)));
        }
        FeedServerMessage::End => {}
    }
}

fn text_of(v: &serde_json::Value, path: &[&str]) -> Option<String> {
    let mut node = v;
    for p in path {
        node = node.get(*p)?;
    }
    match node {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// One record into the list: an envelope is a frame of its recording; JSON naming a recording is a result on it.
fn add(f: &mut Feed, record: &FeedRecord) {
    let v = &record.value;
    match record.kind.as_str() {
        "envelope" => {
            let (Some(car), Some(segment)) = (
                text_of(v, &["deviceInfo", "carID"]),
                record.segment_id.clone().or_else(|| text_of(v, &["segmentId"])),
            ) else {
                return;
            };
            // Without the seq header (a producer other than the relay) a frame cannot be placed in its recording.
            let Some(seq) = record.seq else { return };
            let frame = FrameRef {
                seq,
                partition: record.partition,
                offset: record.offset,
                capture_ms: v["collectTimestamp"].as_i64().unwrap_or_default(),
                duration_ms: v["originData"]["duration"].as_u64().unwrap_or_default() as u32,
            };
            f.view.add_frame(&segment, &car, frame);
        }
        "json" => {
            let segment = text_of(v, &["segmentId"]);
            let car = text_of(v, &["carID"]).or_else(|| text_of(v, &["deviceInfo", "carID"]));
            if let (Some(segment), Some(_)) = (segment, car) {
                let shown: String = v.to_string().chars().take(300).collect();
                f.view.add_result(&segment, shown);
            }
        }
        _ => {}
    }
}
