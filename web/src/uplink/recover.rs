//! Recordings an earlier page left in the outbox (it was reloaded, closed, or crashed before the relay acked
//! everything): found when the page loads and uploaded without anyone pressing anything, oldest first, one at a
//! time, each on its own connection with its own segment id and sequence numbers. Browser only.
//!
//! Where it sits: beside the live recording's uplink. It scans the outbox at load, after each upload, and every
//! [`RESCAN_MS`] (a recording another tab held becomes free when that tab goes away); it uploads a recording only
//! under its Web Lock ([`crate::outbox::lock`]), so two tabs never send the same one at once.

use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures_util::StreamExt as _;
use gloo_timers::callback::Timeout;
use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::{Rc, Weak};

use super::Flow;
use super::socket::{Event, Uplink};
use crate::i18n::{Key, tf};
use crate::outbox::lock::{self, Held};
use crate::outbox::{self, Outbox, Waiting};

/// How often the outbox is looked at again when nothing is uploading.
pub const RESCAN_MS: u32 = 10_000;

/// A recording in the outbox, as the page lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Its segment.
    pub segment_id: String,
    /// Its car.
    pub car_id: String,
    /// When it started (ms since the epoch).
    pub started_ms: f64,
    /// Frames still on the device, and their audio in ms.
    pub frames: u64,
    /// Audio still on the device, ms.
    pub ms: u64,
    /// What is happening to it.
    pub state: RowState,
}

/// What is happening to a waiting recording.
#[derive(Debug, Clone, PartialEq)]
pub enum RowState {
    /// Waiting its turn (or for the relay).
    Waiting,
    /// This tab is uploading it: frames acked of how many there were.
    Uploading {
        /// Frames acked.
        acked: u64,
        /// Frames it had when the upload started.
        total: u64,
        /// Connected to the relay.
        live: bool,
    },
    /// Another tab of the page is uploading it.
    OtherTab,
    /// Completely in Kafka, removed from the device.
    InKafka,
}

/// What the page hears.
pub enum Report {
    /// The rows, whenever one changes.
    Rows(Vec<Row>),
    /// A problem with the outbox, in one line (nothing is lost by it).
    Problem(String),
}

struct Current {
    segment_id: String,
    /// Kept alive while it uploads (its socket handlers hold only weak references).
    _uplink: Rc<RefCell<Uplink>>,
    lock: Option<Held>,
}

/// The page's recovery of earlier recordings.
pub struct Recovery {
    outbox: Outbox,
    url: String,
    token: Rc<RefCell<String>>,
    /// Segments this page itself is recording or uploading live (never recovered under its feet).
    own: HashSet<String>,
    /// Segments the relay refused for good: not tried again by this page.
    refused: HashSet<String>,
    rows: Vec<Row>,
    current: Option<Current>,
    scanning: bool,
    /// The next scan, while one is scheduled (one timer at a time).
    rescan: Option<Timeout>,
    /// Where uploads' events are queued ([`Recovery::events`]).
    events: UnboundedSender<(String, u64, Event)>,
    on_report: Rc<dyn Fn(Report)>,
    me: Weak<RefCell<Recovery>>,
}

impl Recovery {
    /// Starts looking at `outbox`; uploads to `url` with the token field's value.
    pub fn start(
        outbox: Outbox,
        url: String,
        token: Rc<RefCell<String>>,
        on_report: Rc<dyn Fn(Report)>,
    ) -> Rc<RefCell<Self>> {
        let (events, queued) = futures_channel::mpsc::unbounded();
        let r = Rc::new_cyclic(|me| {
            RefCell::new(Self {
                outbox,
                url,
                token,
                own: HashSet::new(),
                refused: HashSet::new(),
                rows: Vec::new(),
                current: None,
                scanning: false,
                rescan: None,
                events,
                on_report,
                me: me.clone(),
            })
        });
        wasm_bindgen_futures::spawn_local(Self::drain(Rc::downgrade(&r), queued));
        r.borrow_mut().scan();
        r
    }

    /// This page records `segment_id` itself: leave it alone.
    pub fn own(&mut self, segment_id: &str) {
        self.own.insert(segment_id.to_owned());
    }

    /// Looks at the outbox now (and uploads the oldest free recording, if nothing is uploading).
    pub fn scan(&mut self) {
        if self.scanning {
            return;
        }
        self.scanning = true;
        let me = self.me.clone();
        let outbox = self.outbox.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let found = outbox.recordings().await;
            let Some(r) = me.upgrade() else { return };
            let (problems, waiting) = match found {
                Ok((waiting, bad)) => (bad, waiting),
                Err(e) => (vec![tf(Key::Unreadable, &[&outbox::describe(&e)])], Vec::new()),
            };
            let on_report = Rc::clone(&r.borrow().on_report);
            for p in problems {
                on_report(Report::Problem(p));
            }
            let candidates = r.borrow_mut().update_rows(waiting);
            if r.borrow().current.is_none() {
                for w in candidates {
                    let held = lock::try_lock(&w.stored.recording.segment_id).await;
                    match held {
                        Ok(Some(held)) => {
                            // Looked at again under the lock: another tab may have finished it meanwhile.
                            Recovery::upload(&r, w, held).await;
                            break;
                        }
                        Ok(None) => r.borrow_mut().set_state(&w.stored.recording.segment_id, RowState::OtherTab),
                        Err(e) => on_report(Report::Problem(tf(Key::LocksRefused, &[&outbox::describe(&e)]))),
                    }
                }
            }
            r.borrow_mut().scanning = false;
            r.borrow().report();
            // One timer at a time: a scan started by an upload's end does not start a second chain of them.
            if r.borrow().rescan.is_none() {
                let me = Rc::downgrade(&r);
                r.borrow_mut().rescan = Some(Timeout::new(RESCAN_MS, move || {
                    if let Some(r) = me.upgrade() {
                        let mut r = r.borrow_mut();
                        r.rescan = None;
                        r.scan();
                    }
                }));
            }
        });
    }

    /// Replaces the rows with what the outbox holds (keeping the states this page knows); returns the recordings
    /// that may be uploaded, oldest first.
    fn update_rows(&mut self, waiting: Vec<Waiting>) -> Vec<Waiting> {
        let done: Vec<Row> = self.rows.iter().filter(|r| r.state == RowState::InKafka).cloned().collect();
        let old = std::mem::take(&mut self.rows);
        let mut candidates = Vec::new();
        for w in waiting {
            let segment_id = w.stored.recording.segment_id.clone();
            if self.own.contains(&segment_id) {
                continue;
            }
            let state = old
                .iter()
                .find(|r| r.segment_id == segment_id)
                .map(|r| r.state.clone())
                .filter(|s| matches!(s, RowState::Uploading { .. }))
                .unwrap_or(RowState::Waiting);
            self.rows.push(Row {
                car_id: w.stored.recording.device.car_id.clone(),
                started_ms: w.stored.started_ms,
                frames: u64::from(w.frames),
                ms: u64::from(w.frames) * u64::from(w.stored.frame_ms),
                state,
                segment_id,
            });
            if !self.refused.contains(&w.stored.recording.segment_id) {
                candidates.push(w);
            }
        }
        // Recordings finished by this page stay listed as in Kafka.
        for d in done {
            if !self.rows.iter().any(|r| r.segment_id == d.segment_id) {
                self.rows.push(d);
            }
        }
        candidates
    }

    fn set_state(&mut self, segment_id: &str, state: RowState) {
        if let Some(row) = self.rows.iter_mut().find(|r| r.segment_id == segment_id) {
            row.state = state;
        }
        self.report();
    }

    fn report(&self) {
        (self.on_report)(Report::Rows(self.rows.clone()));
    }

    async fn upload(r: &Rc<RefCell<Self>>, waiting: Waiting, held: Held) {
        let segment_id = waiting.stored.recording.segment_id.clone();
        let outbox = r.borrow().outbox.clone();
        // Counted again under the lock: the tab that held it may have uploaded some or all of it.
        let fresh = outbox
            .recordings()
            .await
            .ok()
            .and_then(|(all, _)| all.into_iter().find(|w| w.stored.recording.segment_id == segment_id));
        let Some(w) = fresh else {
            held.release();
            r.borrow_mut().rows.retain(|row| row.segment_id != segment_id);
            return;
        };
        let total = u64::from(w.frames);
        let first = w.seqs.map(|(first, _)| first);
        if first.is_none() {
            // Nothing left of it: an earlier page was removing it when it went away.
            let _ = outbox.finish(&segment_id).await;
            held.release();
            r.borrow_mut().set_state(&segment_id, RowState::InKafka);
            return;
        }
        let flow = Flow::recovered(super::WINDOW_BYTES, first, w.frames, total * u64::from(w.stored.frame_ms));
        let on_event = r.borrow().events(segment_id.clone(), total);
        let (url, token) = {
            let r = r.borrow();
            (r.url.clone(), r.token.borrow().clone())
        };
        let uplink =
            Uplink::start(url, token, w.stored.recording.clone(), w.stored.frame_ms, flow, Some(outbox), on_event);
        let mut rec = r.borrow_mut();
        rec.current = Some(Current { segment_id: segment_id.clone(), _uplink: uplink, lock: Some(held) });
        rec.set_state(&segment_id, RowState::Uploading { acked: 0, total, live: false });
    }

    /// What an upload's uplink reports, queued: it is handled after the uplink's own call has returned, never
    /// inside it (the uplink and this recovery may be borrowed then).
    fn events(&self, segment_id: String, total: u64) -> Rc<dyn Fn(Event)> {
        let events = self.events.clone();
        Rc::new(move |event| {
            let _ = events.unbounded_send((segment_id.clone(), total, event));
        })
    }

    /// Handles the queued events of uploads, one at a time, for as long as the recovery lives.
    async fn drain(me: Weak<RefCell<Self>>, mut events: UnboundedReceiver<(String, u64, Event)>) {
        while let Some((segment_id, total, event)) = events.next().await {
            let Some(r) = me.upgrade() else { return };
            r.borrow_mut().on_upload_event(&segment_id, total, event);
        }
    }

    fn on_upload_event(&mut self, segment_id: &str, total: u64, event: Event) {
        let live = matches!(event, Event::Live | Event::Counts { .. } | Event::Relay(..));
        match event {
            Event::Counts { acked, pending, pending_ms } => {
                if let Some(row) = self.rows.iter_mut().find(|row| row.segment_id == segment_id) {
                    row.frames = pending;
                    row.ms = pending_ms;
                }
                self.set_state(segment_id, RowState::Uploading { acked, total, live });
            }
            Event::Live | Event::Relay(..) | Event::Reconnecting { .. } => {
                let acked = match self.rows.iter().find(|row| row.segment_id == segment_id).map(|r| &r.state) {
                    Some(RowState::Uploading { acked, .. }) => *acked,
                    _ => 0,
                };
                self.set_state(segment_id, RowState::Uploading { acked, total, live });
            }
            Event::Problem(p) => (self.on_report)(Report::Problem(p)),
            Event::Refused(message) => {
                // The relay refuses this recording for good (its hello, its token): say so and leave it
                // on the device; the next page load tries again (with the token entered by then).
                (self.on_report)(Report::Problem(tf(Key::WaitingRefused, &[&message])));
                self.refused.insert(segment_id.to_owned());
                if let Some(c) = self.current.take()
                    && let Some(l) = c.lock
                {
                    l.release();
                }
                self.set_state(segment_id, RowState::Waiting);
            }
            Event::Done => {
                if let Some(row) = self.rows.iter_mut().find(|row| row.segment_id == segment_id) {
                    row.frames = 0;
                    row.ms = 0;
                }
                if let Some(mut c) = self.current.take()
                    && c.segment_id == segment_id
                    && let Some(l) = c.lock.take()
                {
                    l.release();
                }
                self.set_state(segment_id, RowState::InKafka);
                self.scan();
            }
        }
    }
}
